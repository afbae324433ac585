"""Session-wide fixtures live in tests/fixtures/*; each area registers its module here."""

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures.prometheus",
    "tests.fixtures.engine",
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
    "live_server": "engine",
    "fixed_length_server": "engine",
    "redis_server": "redis",
    "redis_url": "redis",
    "prometheus": "prometheus",
}
SLOW_MODULES = {
    "test_admin_kill9",  # t2serve subprocesses, kill -9 and restart
    "test_budget_concurrency",  # worker processes, kill -9 under load
    "test_budget_sqlite_workers",  # worker processes on one SQLite file
    "test_aggregate_verifiers",  # the reward-model verifier loads torch
    "test_server_drain",  # `t2serve serve` subprocesses, SIGTERM
    "test_observability_gauges",  # worker processes on one ledger
}
SLOW_TESTS = {
    "test_3000_distinct_policies_grow_neither_the_book_nor_memory",  # 3,300 requests
    "test_the_policy_book_stays_bounded_whatever_specs_clients_send",
    "test_two_worker_processes_add_up",  # worker processes
    "test_a_worker_that_exits_drops_its_live_gauges",
    "test_reset_multiprocess_dir_forgets_old_runs",
    "test_rate_limits_and_their_window_survive_kill_9",  # server processes, kill -9
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marks = {MARK_BY_FIXTURE.get(name) for name in getattr(item, "fixturenames", ())}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "redis" in callspec.id.split("-"):
            marks.add("redis")
        if item.path.stem in SLOW_MODULES or item.name.partition("[")[0] in SLOW_TESTS:
            marks.add("slow")
        for mark in sorted(m for m in marks if m):
            item.add_marker(mark)
