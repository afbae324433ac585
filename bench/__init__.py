"""Benchmarks: each module in this package has `main() -> None` and prints its figures."""
