"""Helpers of the benchmark (``python -m tools.bench``).

Not part of the agent: stand-ins at the libvirt API boundary, fixture
trees, the per-scale worker processes and the report.
"""
