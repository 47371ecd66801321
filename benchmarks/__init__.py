"""Benchmarks: `make bench` runs every benchmarks/bench_*.py module and prints figures."""
