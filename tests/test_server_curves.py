"""The server serves a model's curves: t2 on it starts from the calibrated prior, answers with a
predicted accuracy from the curve and the votes, and keeps what it learned across a restart."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.policy.t2 import T2
from controller.scaling.served import load_served
from server.app import create_app, serve_in_loop
from server.config import ConfigError, parse_config
from tests.fakes import ScriptedEngine, cycle

MODEL = "tiny-chain-31k"
CURVES = f"models/{MODEL}/curves.json"
AUTH = {"Authorization": "Bearer k"}


def _config(
    ledger: Path, curves: bool = True, path: str = f"models/{MODEL}", model: str = MODEL
) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model, "path": path}
    if curves:
        entry["curves"] = CURVES
    return {
        "demo": True,
        "models": [entry],
        "ledger": {"backend": "sqlite", "path": str(ledger)},
        "defaults": {"policy": "t2", "max_samples": 16, "max_tokens": 8},
        "tenants": [{"id": "acme", "api_keys": [{"plain": "k"}]}],
    }


async def _ask(app: Any, n: int, model: str = MODEL) -> list[dict[str, Any]]:
    out = []
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=60) as http,
    ):
        for i in range(n):
            body = {"model": model, "messages": [{"role": "user", "content": f"Q: {i}"}]}
            resp = await http.post("/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            out.append(resp.json()["t2"])
    return out


async def test_t2_serves_from_the_curves_and_keeps_learning_across_a_restart(
    tmp_path: Path,
) -> None:
    served = load_served(CURVES, MODEL)
    ledger = tmp_path / "ledger.sqlite"
    engine = ScriptedEngine(cycle("A: 5", "A: 5", "A: 5", "A: 7"))
    app = create_app(parse_config(_config(ledger)), engine=engine)
    answers = await _ask(app, 24)
    first = answers[0]
    assert first["predicted_accuracy"] == served.accuracy_given_votes(
        first["samples"], first["votes"]["5"]
    )
    book = app.state.t2.policies
    policy = await book.get("acme", MODEL, "t2")
    assert isinstance(policy, T2) and policy.initial_prior == served.leader_prior
    assert policy.seen == 24
    # a restart: a new app on the same ledger file starts where the last one stopped
    again = create_app(parse_config(_config(ledger)), engine=engine)
    await _ask(again, 1)
    restored = await again.state.t2.policies.get("acme", MODEL, "t2")
    assert isinstance(restored, T2) and restored.seen == 25
    assert restored.prior != served.leader_prior  # refitted from traffic, anchored at it


async def test_without_curves_t2_starts_uniform(tmp_path: Path) -> None:
    weights = tmp_path / "weights"  # no curves.json beside them
    weights.mkdir()
    config = _config(tmp_path / "l.sqlite", curves=False, path=str(weights))
    app = create_app(parse_config(config), engine=ScriptedEngine(cycle("A: 5")))
    await _ask(app, 1)
    policy = await app.state.t2.policies.get("acme", MODEL, "t2")
    assert isinstance(policy, T2) and policy.initial_prior.a == policy.initial_prior.b == 1.0


async def test_curves_beside_the_weights_serve_without_a_curves_entry(tmp_path: Path) -> None:
    """The file a route over the model reads is the one its t2 starts from: a model in a
    route and on its own must not be calibrated in one and not the other."""
    config = _config(tmp_path / "l.sqlite", curves=False)  # models/tiny-chain-31k/curves.json
    app = create_app(parse_config(config), engine=ScriptedEngine(cycle("A: 5")))
    await _ask(app, 1)
    policy = await app.state.t2.policies.get("acme", MODEL, "t2")
    assert isinstance(policy, T2)
    assert policy.initial_prior == load_served(CURVES, MODEL).leader_prior


async def test_curves_beside_the_weights_without_the_models_entry_are_logged_and_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(CURVES, weights / "curves.json")  # calibrated for tiny-chain-31k, not "other"
    config = _config(tmp_path / "l.sqlite", curves=False, path=str(weights), model="other")
    with caplog.at_level(logging.WARNING, logger="t2serve.policies"):
        app = create_app(parse_config(config), engine=ScriptedEngine(cycle("A: 5")))
        await _ask(app, 1, model="other")
    policy = await app.state.t2.policies.get("acme", "other", "t2")
    assert isinstance(policy, T2) and policy.initial_prior.a == policy.initial_prior.b == 1.0
    assert "curves.json beside its weights is not used" in caplog.text


@pytest.mark.parametrize("where", [("serving", MODEL, "leader_prior", "a"), ("models", MODEL, "a")])
def test_curves_with_an_infinite_number_are_refused(tmp_path: Path, where: tuple[str, ...]) -> None:
    """JSON's Infinity loaded and turned t2's predictions into NaN (invalid value warnings)."""
    curves = json.loads(Path(CURVES).read_text())
    node = curves
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = "INF"
    bad = tmp_path / "curves.json"
    bad.write_text(json.dumps(curves).replace('"INF"', "Infinity"))
    data = _config(tmp_path / "ledger.sqlite")
    data["models"][0]["curves"] = str(bad)
    with pytest.raises(ConfigError, match=r"models\.0.*finite"):
        parse_config(data)
