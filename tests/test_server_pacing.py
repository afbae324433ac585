"""Through the real server on the shipped default config (a demo tenant with a daily budget in
the default cap pacing): each policy behaves as its own defaults say. A budget with slack adds
no pressure, so ESC stops at its first unanimous window of 5 and Adaptive-Consistency at
C = 0.95, instead of running to max_samples as they did when slack lowered the price."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from controller.policy import beta_confidence
from models.train_tiny import heldout_questions, question_text
from server.app import create_app, serve_in_loop
from server.config import parse_config

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [question_text(q) for q in heldout_questions(24)]


@pytest.fixture
def default_config(tmp_path: Path) -> Any:
    data = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    data["ledger"]["path"] = str(tmp_path / "ledger.sqlite")  # the default, in a fresh file
    return parse_config(data, "configs/default.yaml")


async def answers(engine: Any, config: Any, policy: str) -> list[dict[str, Any]]:
    # pooling={}: no policy here uses the default config's reward model; without it every app
    # would build a vLLM pooling engine in the background while the test runs
    async with (
        serve_in_loop(create_app(config, engine=engine, pooling={})) as live,
        openai.AsyncOpenAI(base_url=live.v1, api_key="demo-key", max_retries=0, timeout=120) as api,
    ):

        async def ask(i: int, question: str) -> dict[str, Any]:
            resp = await api.chat.completions.create(
                model="tiny-chain-31k",  # a default-config id; the session engine serves it
                messages=[{"role": "user", "content": question}],
                seed=i,  # the same samples on every run
                extra_body={"t2": {"policy": policy}},
            )
            return resp.model_extra["t2"] if resp.model_extra else {}

        # together, as traffic arrives: each request's waves are its own whatever the others do
        return list(await asyncio.gather(*(ask(i, q) for i, q in enumerate(QUESTIONS))))


async def test_esc_stops_at_its_first_unanimous_window(engine: Any, default_config: Any) -> None:
    t2s = await answers(engine, default_config, "esc:5")
    converged = [t for t in t2s if t["stop_reason"] == "converged"]
    assert converged, [t["samples"] for t in t2s]  # slack no longer stretches the window
    for t in converged:  # windows of exactly 5, and the last one was unanimous
        assert t["samples"] % 5 == 0 and t["samples"] <= 15
        assert max(t["votes"].values()) >= 5
    assert all(t["stop_reason"] == "max_samples" for t in t2s if t not in converged)
    assert all(t["price_of_compute"] is None for t in t2s)  # a cap with slack: no price


async def test_adaptive_consistency_stops_at_c_095(engine: Any, default_config: Any) -> None:
    t2s = await answers(engine, default_config, "adaptive_consistency")
    converged = [t for t in t2s if t["stop_reason"] == "converged"]
    assert converged, [t["samples"] for t in t2s]
    for t in converged:
        counts = [*sorted(t["votes"].values(), reverse=True), 0]
        v1, v2 = counts[0], counts[1]
        # it stopped the first time the confidence reached C = 0.95: the last vote went to
        # the leader (one to the runner-up would have stopped it a vote earlier)
        assert beta_confidence(v1, v2) >= 0.95 > beta_confidence(v1 - 1, v2)
        assert t["samples"] < 16
