"""Benchmarks: each module in this package has `main() -> None` and prints its figures."""

import os


def executor_setting() -> dict[str, str]:
    """t2serve's `engine.executor` for the serving benchmarks: T2_BENCH_EXECUTOR (`uni` or `mp`)
    when set, else nothing, so the engine's own default applies."""
    name = os.environ.get("T2_BENCH_EXECUTOR")
    return {"executor": name} if name else {}
