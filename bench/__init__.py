"""Benchmark tools for apiguard (not part of the test suite): `python -m bench.run`."""
