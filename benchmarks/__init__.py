"""Benchmark scripts (not timed tests): each prints a table and writes JSON. See benchmarks/RESULTS.md."""
