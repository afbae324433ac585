"""The config's routes as built once per process: a model in several routes reads its
calibration samples once, and a second app (or a config reload) reuses the built routes."""

from __future__ import annotations

from server.config import AppConfig, parse_config
from server.serving import route_table as table
from tests.fixtures.server import server_config_dict

SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"


def config() -> AppConfig:
    cfg = server_config_dict()
    cfg["models"] = [
        {"id": SMALL, "path": f"models/{SMALL}"},
        {"id": LARGE, "path": f"models/{LARGE}"},
        {"id": "auto", "route": [SMALL, LARGE]},
        {"id": "cascade", "route": [SMALL, LARGE], "start": "cheapest"},
    ]
    return parse_config(cfg)


def test_each_member_is_read_once_and_built_routes_are_reused() -> None:
    table._calibration.cache_clear()
    table._BUILT.clear()
    first = table.route_table(config())
    assert table._calibration.cache_info().misses == 2  # two models, in two routes each
    again = table.route_table(config())
    assert table._calibration.cache_info().misses == 2
    assert set(first) == {"auto", "cascade"}
    assert all(again[r] is first[r] for r in first)
