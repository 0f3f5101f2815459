"""Benchmark suite: `python -m benchmarks` (see benchmarks/README.md)."""
