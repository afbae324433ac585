"""Tenant budget config: inline or in an included file, and refused at start naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server.config import ConfigError, hash_key, load_config
from tests.support import ROOT, fenced_blocks

BASE = {"models": [{"id": "m", "path": "models/m"}]}
TENANT = {
    "id": "acme",
    "api_keys": [{"sha256": hash_key("k")}],
    "prices": {"currency": "EUR", "models": {"m": {"prompt_per_1m": 0.5, "params": 1.6e8}}},
    "budgets": {
        "request": {"limit": 0.01},
        "minute": {"limit": 1, "rolling": True},
        "day": {"limit": 20, "hard": False},
        "month": {"limit": 5e17, "unit": "flops"},
    },
    "pacing": {"horizon": 0.05},
}


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_tenants_inline_and_from_an_included_file(tmp_path: Path) -> None:
    inline = load_config(write(tmp_path / "a.yaml", {**BASE, "tenants": [TENANT]}))
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "tenants.yaml", [TENANT])
    main = write(tmp_path / "b.yaml", {**BASE, "tenants": {"include": "conf.d/tenants.yaml"}})
    included = load_config(main)
    assert inline.tenants == included.tenants
    budgets = included.tenants[0].budgets
    assert budgets is not None and budgets.minute is not None and budgets.minute.rolling
    assert budgets.day is not None and budgets.day.hard is False
    assert [name for name, _ in budgets.windows()] == ["minute", "day", "month"]
    assert included.tenants[0].pacing.horizon == 0.05


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"budgets": {"day": {"limit": 0}}}, "tenants.0.budgets.day.limit"),
        ({"budgets": {"week": {"limit": 1}}}, "tenants.0.budgets.week"),
        ({"budgets": {"day": {"limit": 1, "unit": "dollars"}}}, "tenants.0.budgets.day.unit"),
        ({"budgets": {"hour": {"limit": 1, "hrad": True}}}, "tenants.0.budgets.hour.hrad"),
        ({"prices": {"models": {"m": {"prompt_per_1m": -1}}}}, "tenants.0.prices.models.m"),
        ({"pacing": {"horizon": 2}}, "tenants.0.pacing.horizon"),
    ],
)
def test_invalid_budget_config_is_refused_naming_the_field(
    tmp_path: Path, change: dict[str, object], field: str
) -> None:
    path = write(tmp_path / "c.yaml", {**BASE, "tenants": [{**TENANT, **change}]})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


def test_a_missing_include_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", {**BASE, "tenants": {"include": "nope.yaml"}})
    with pytest.raises(ConfigError, match=r"tenants\.include"):
        load_config(path)


def test_a_reservation_ttl_shorter_than_a_request_is_refused(tmp_path: Path) -> None:
    """A hold that lapses mid-wave lets another replica book the same budget: overspend."""
    risky = {
        **BASE,
        "tenants": [TENANT],
        "server": {"request_timeout_s": 300},
        "ledger": {"reservation_ttl_s": 120},
    }
    with pytest.raises(ConfigError, match=r"ledger\.reservation_ttl_s \(120\) must exceed"):
        load_config(write(tmp_path / "c.yaml", risky))
    defaults = load_config(write(tmp_path / "d.yaml", {**BASE, "tenants": [TENANT]}))
    ttl = defaults.ledger.reservation_ttl_s
    assert ttl is not None and ttl > defaults.server.request_timeout_s


def test_the_budgets_page_example_loads(tmp_path: Path) -> None:
    """docs/budgets.md's own example did not load: YAML 1.1 read `4e17` and `1.6e7` as
    strings, which the strict budget and price fields refuse."""
    blocks = fenced_blocks((ROOT / "docs/budgets.md").read_text(), ("yaml",))
    block = next(code for _, code in blocks if "budgets:" in code)
    digests = iter(hash_key(str(i)) for i in range(10))
    text = re.sub(r"<sha256 hex of the admin key>|<hex>", lambda _: next(digests), block)
    text += "models: [{id: tiny-arith, path: models/tiny-arith}]\n"
    cfg = load_config(write_text(tmp_path / "budgets.yaml", text))
    budgets = cfg.tenants[0].budgets
    assert budgets is not None and budgets.month is not None and budgets.month.limit == 4e17
    assert cfg.tenants[0].prices is not None
    assert cfg.tenants[0].prices.models["tiny-arith"].params == 1.6e7


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
