"""The shipped reward model (models/tiny-chain-rm) on vLLM's real pooling runner: correct samples
scored above incorrect ones on held-back questions (AUC ≥ 0.8), and its compute billed in FLOPs.
The suite's chain-pair app (tests/fixtures/chain_pair.py) starts it from config after its
generators, and test_server_routes checks its own readiness in that app's /readyz."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.train_reward import REPLAYS, auc, labelled, replay_rows
from server.app import create_app
from server.config import parse_config
from server.engine.weights import parameter_count
from tests.fixtures.chain_pair import RM, ChainPair
from tests.fixtures.server import MODEL, LiveServer, OpenClient, serve_in_loop

pytestmark = pytest.mark.engine
KEY = "reward-model-key"
PER_FILE = 48  # held-back questions per replay file, 16 samples each


@pytest.fixture(scope="module")
async def live(
    engine: Any, chain_pair: ChainPair, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """The reward model as the suite shares it (started by the chain-pair app's lifespan), in
    an app that serves tiny-arith and verifies with it."""
    ledger = Path(tmp_path_factory.mktemp("rm")) / "ledger.sqlite"
    config = parse_config(
        {
            "demo": True,
            "models": [{"id": MODEL, "path": "models/tiny-arith"}],
            "verifier_models": [{"id": RM, "path": f"models/{RM}"}],
            "ledger": {"backend": "sqlite", "path": str(ledger)},
            "defaults": {"policy": "fixed:4", "max_tokens": 24},
            "tenants": [
                {
                    "id": "rm",
                    "api_keys": [{"plain": KEY}],
                    "aggregator": "best_of_n",
                    "verifiers": [{"kind": "reward_model", "model": RM}],
                    "budgets": {"day": {"limit": 1e15, "unit": "flops"}},
                }
            ],
        },
        "reward model test config",
    )
    app = create_app(config, engine=engine, pooling=chain_pair.pooling)
    async with serve_in_loop(app) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["models"][RM] == "ready", ready.text
        yield server


async def test_the_reward_model_ranks_right_samples_above_wrong_ones_on_held_back_questions(
    live: LiveServer,
) -> None:
    """AUC ≥ 0.8 on the larger served model's samples of held-back questions. On the small
    model's it is ≈ 0.62, a known miss (see the model card): its slips are single wrong sums
    carried on consistently, which this reward model has not learnt to spot in the CPU
    minutes it was trained; the floor here only guards against a regression."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(f"models/{RM}")
    pooling = live.app.state.t2.verifiers.pooling[RM]
    rng = random.Random(0)
    areas = {}
    for path in REPLAYS:
        held = labelled(replay_rows(path), keep_held_back=True)  # never trained on
        questions = sorted({h[2] for h in held})
        chosen = sorted(rng.sample(questions, PER_FILE))
        rows = [r for q in chosen for r in [h for h in held if h[2] == q][:16]]
        scored = await pooling.classify([r[0] for r in rows])
        labels = [r[1] for r in rows]
        areas[path.parent.name] = auc(scored.scores, labels)
        read = sum(len(tokenizer.encode(r[0], add_special_tokens=False)) for r in rows)
        assert abs(scored.tokens - read) <= len(rows)  # what billing counts is what it read
    assert areas["tiny-chain-252k"] >= 0.8, areas
    assert areas["tiny-chain-31k"] >= 0.58, areas  # better than chance, short of 0.8


async def test_best_of_n_with_the_reward_model_bills_two_n_flops_per_scored_token(
    live: LiveServer, openai_client: OpenClient
) -> None:
    api = openai_client(live.v1, KEY)
    resp = await api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Q: 9+4-6=?"}], temperature=1.0
    )
    t2 = (resp.model_extra or {})["t2"]
    assert t2["aggregator"] == "best_of_n" and t2["verifier"] == RM and t2["note"] is None
    n_rm = parameter_count(f"models/{RM}")
    assert n_rm is not None and t2["verifier_tokens"] > 0
    assert t2["verifier_cost"] == pytest.approx(2 * n_rm * t2["verifier_tokens"])
    assert resp.usage is not None
    assert (resp.usage.model_extra or {})["verifier_tokens"] == t2["verifier_tokens"]
    n_gen = parameter_count("models/tiny-arith")
    assert n_gen is not None
    billed = t2["billed_prompt_tokens"] + t2["billed_completion_tokens"]  # computed tokens
    generated = 2 * n_gen * billed
    assert t2["cost"] == pytest.approx(generated + t2["verifier_cost"])
