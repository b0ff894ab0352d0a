"""Benchmarks, each run from the repository root as ``python -m bench.<name>``; their shared
helpers are in ``bench.common``."""
