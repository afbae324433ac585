"""The config's routes as built once per process: a model in several routes reads its
calibration samples once, and a second app (or a config reload) reuses the built routes."""

from __future__ import annotations

from server.serving import route_table as table
from tests.fixtures.routes import routes_config


def test_each_member_is_read_once_and_built_routes_are_reused() -> None:
    table._calibration.cache_clear()
    table._BUILT.clear()
    first = table.route_table(routes_config())
    assert table._calibration.cache_info().misses == 2  # two models, in two routes each
    again = table.route_table(routes_config())
    assert table._calibration.cache_info().misses == 2
    assert set(first) == {"auto", "cascade"}
    assert all(again[r] is first[r] for r in first)
