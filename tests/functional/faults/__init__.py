"""Fault injection against the real agent: ``tox -e faults``.

See doc/faults.md for what each test injects and what must hold.
"""
