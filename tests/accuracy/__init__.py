"""Ground-truth accuracy harness (issue 9, doc/accuracy.md).

An emulated powercap tree whose power follows the host's real per-CPU
load (emulated_rapl), host-side noise (loads), real TCG guests with a
known load, the real agent with its default attribution configuration,
and a comparison of what the agent attributes with what each guest
truly caused (harness).
"""
