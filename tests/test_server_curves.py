"""The server serves a model's curves: t2 on it starts from the calibrated prior, answers with a
predicted accuracy from the curve and the votes, and keeps what it learned across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from controller.policy.t2 import T2
from controller.scaling.served import load_served
from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fakes import ScriptedEngine, cycle

MODEL = "tiny-chain-31k"
CURVES = f"models/{MODEL}/curves.json"
AUTH = {"Authorization": "Bearer k"}


def _config(ledger: Path, curves: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": MODEL, "path": f"models/{MODEL}"}
    if curves:
        entry["curves"] = CURVES
    return {
        "demo": True,
        "models": [entry],
        "ledger": {"backend": "sqlite", "path": str(ledger)},
        "defaults": {"policy": "t2", "max_samples": 16, "max_tokens": 8},
        "tenants": [{"id": "acme", "api_keys": [{"plain": "k"}]}],
    }


async def _ask(app: Any, n: int) -> list[dict[str, Any]]:
    out = []
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=60) as http,
    ):
        for i in range(n):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Q: {i}"}]}
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
    engine = ScriptedEngine(cycle("A: 5"))
    app = create_app(parse_config(_config(tmp_path / "l.sqlite", curves=False)), engine=engine)
    await _ask(app, 1)
    policy = await app.state.t2.policies.get("acme", MODEL, "t2")
    assert isinstance(policy, T2) and policy.initial_prior.a == policy.initial_prior.b == 1.0
