"""The pluq transport contract kit: run it with `pytest transports --transport-url URL`.

A package (rather than a loose folder) so that its modules have unique names
(`transports.test_backend` never clashes with a `tests/test_backend.py`) and so that child
processes started with "spawn" can import `transports._procs` by name. See README.md.
"""
