"""A model's curves on config reload: the policy book keeps the policies built on curves that
did not change, rebuilds those whose file changed, and refuses a file it cannot read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from controller.policy.t2 import T2
from server.config import AppConfig, hash_key, parse_config
from server.errors import ConfigError
from server.sampling.policies import policy_book, served_curves

MODEL = "tiny-chain-31k"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / MODEL


def _config(tmp_path: Path, curves: Path) -> AppConfig:
    return parse_config({
        "models": [{"id": MODEL, "path": str(SHIPPED), "curves": str(curves)}],
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
        "tenants": [{"id": "acme", "api_keys": [{"sha256": hash_key("k")}]}],
    })  # fmt: skip


async def test_a_reload_rebuilds_only_the_policies_of_changed_curves(tmp_path: Path) -> None:
    curves = tmp_path / "curves.json"
    shutil.copy(SHIPPED / "curves.json", curves)
    config = _config(tmp_path, curves)
    book = policy_book(config)
    try:
        first = await book.get("acme", MODEL, "t2")
        assert isinstance(first, T2)
        served = book.curves[MODEL]
        book.swap_curves(served_curves(config, book.versioned))  # same file, same version
        assert await book.get("acme", MODEL, "t2") is first
        assert book.curves[MODEL] is served  # not even read again

        stat = curves.stat()
        os.utime(curves, (stat.st_atime, stat.st_mtime + 10))  # recalibrated in place
        book.swap_curves(served_curves(config, book.versioned))
        again = await book.get("acme", MODEL, "t2")
        assert again is not first and isinstance(again, T2)
        assert book.curves[MODEL] is not served

        curves.write_text("{not json")
        os.utime(curves, (stat.st_atime, stat.st_mtime + 20))
        with pytest.raises(ConfigError, match=r"models\.0\.curves"):
            served_curves(config, book.versioned)
        assert await book.get("acme", MODEL, "t2") is again  # a refused reload changes nothing
    finally:
        await book.aclose()
