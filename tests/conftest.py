"""Session-wide fixtures live in tests/fixtures/*; each area registers its module here."""

import os
from pathlib import Path
from typing import Any

import pytest

# Fixture modules import one another (chain_pair → routes → server), so one can be imported
# before pytest reaches it in pytest_plugins and would keep plain asserts: mark them all first.
pytest.register_assert_rewrite("tests.fixtures")

pytest_plugins: list[str] = [
    "tests.fixtures.prometheus",
    "tests.fixtures.engine",
    "tests.fixtures.chain_pair",
    "tests.fixtures.server",
    "tests.fixtures.fixed_length",
    "tests.fixtures.redis",
    "tests.fixtures.stores",
]

# `make test-fast` runs `-m "not engine and not redis and not prometheus and not slow"`: the
# inner loop, no engine and no services. Tests get those markers here, not one by one: by the
# fixtures they use, by a `redis` parameter (the store fixtures ask for Redis lazily), and, for
# modules and tests that start server processes, kill -9 them, load torch or send thousands
# of requests, by name.
MARK_BY_FIXTURE = {
    "engine": "engine",
    "chain_pair": "engine",
    "live_server": "engine",
    "fixed_length_server": "engine",
    "redis_server": "redis",
    "redis_url": "redis",
    "own_redis": "redis",
    "prometheus": "prometheus",
}
SLOW_MODULES = {
    "test_admin_kill9",  # t2serve subprocesses, kill -9 and restart
    "test_budget_concurrency",  # worker processes, kill -9 under load
    "test_budget_sqlite_workers",  # worker processes on one SQLite file
    "test_aggregate_verifiers",  # the reward-model verifier loads torch
    "test_server_drain",  # `t2serve serve` subprocesses, SIGTERM
    "test_observability_gauges",  # worker processes on one ledger
    "test_schemathesis_routes",  # a fuzzer: ~4,000 requests, 27 s of the inner loop's 85
}
SLOW_TESTS = {
    "test_3000_distinct_policies_grow_neither_the_book_nor_memory",  # 3,300 requests
    "test_the_policy_book_stays_bounded_whatever_specs_clients_send",
    "test_two_worker_processes_add_up",  # worker processes
    "test_a_worker_that_exits_drops_its_live_gauges",
    "test_reset_multiprocess_dir_forgets_old_runs",
    "test_rate_limits_and_their_window_survive_kill_9",  # server processes, kill -9
}


# The longest files run first, so `make test`'s workers finish together instead of one waiting
# on a long file that started last. Seconds per file (setup, calls and teardown; --durations=0
# under two workers, 2026-12-05 22:20) in the comments.
LONGEST_FIRST = (
    "test_server_routes",  # 77: starts the chain pair and its reward model (SHARED_FILES)
    "test_server_readme",  # 10 on the shared engines
    "test_reward_model",  # 10 on the shared engines
    "test_observability_scrape",  # 94: Prometheus and `t2serve serve` processes
    "test_budget_sqlite_workers",  # 73: 9 x three worker processes on one SQLite file
    "test_server_faults",  # 48: schemathesis on the real engine, 40 examples per operation
    "test_mini_t2_grid",  # 42
    "test_calibrate",  # 39
    "test_engine_remote",  # 38
    "test_request_fields",  # 35
    "test_schemathesis_routes",  # 28: 200 examples per operation
    "test_hostile_load",  # 22
    "test_server_drain",  # 21
    "test_budget_replicas",  # 20
    "test_budget_concurrency",  # 19
    "test_clients",  # 18
)
SHARED_FILES = frozenset({"test_server_routes", "test_server_readme", "test_reward_model"})
"""The files on the `chain_pair` engines (tests/fixtures/chain_pair.py). `make test`'s workers
take whole files (module fixtures start once), and these three as one unit, so the engines
start once per run rather than once per worker that happens to need them."""


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, with SHARED_FILES as one unit of work. (xdist's own `loadgroup` marks
    do not group under pytest 9: xdist 3.8 renames `item._nodeid`, which pytest 9 no longer
    reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedEnginesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "chain-pair" if Path(path).stem in SHARED_FILES else path

    return SharedEnginesTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {stem: i for i, stem in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: else as collected
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        marks = {MARK_BY_FIXTURE.get(name) for name in fixtures}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "redis" in callspec.id.split("-"):
            marks.add("redis")
        if item.path.stem in SLOW_MODULES or item.name.partition("[")[0] in SLOW_TESTS:
            marks.add("slow")
        for mark in sorted(m for m in marks if m):
            item.add_marker(mark)
        if "chain_pair" in fixtures and item.path.stem not in SHARED_FILES:
            raise pytest.UsageError(
                f"{item.path.name} uses chain_pair: add it to SHARED_FILES in tests/conftest.py"
            )


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test`'s workers (pytest-xdist), vLLM's CPU engines are not pinned to a core
    and run one OpenMP thread each. By default every CPU engine binds its one thread to core 0,
    so two workers' engines would share one core; pinned to a core each, an engine still
    cannot move off a core its worker's other processes (server, fuzzer, subprocesses) are
    busy on, and under a loaded suite it burned ~1.8x the CPU for the same requests
    (schemathesis against the live server, two busy loops beside it: at least 71 CPU-s pinned,
    38 unpinned; BENCHMARKS.md "The test suite's time"). Unpinned, the kernel balances the two
    cores. OMP_NUM_THREADS=1 reaches everything the worker starts (the grid smoke's training
    too, which ran in 33.9 s with it against 35.6 s without, alone)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    if worker.startswith("gw") and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
