"""Judge and checker verifiers end to end: the real engine behind the real server, the official
client; the judge's compute is billed in the ledger (SQLite) and counted in `usage`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from controller.aggregate import get_extractor
from controller.aggregate.checkers import chain_steps
from server.app import create_app
from server.config import parse_config
from tests.fixtures.server import MODEL, LiveServer, OpenClient, serve_in_loop

pytestmark = pytest.mark.engine
last_number = get_extractor("last_number")
KEYS = {"checked": "kinds-checked-key", "judged": "kinds-judged-key"}
PRICE = {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}
QUESTIONS = ["Q: 9+4-6=?", "Q: 7+8-9=?", "Q: 5+6-2=?"]


@pytest.fixture(scope="module")
async def live(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    ledger = Path(tmp_path_factory.mktemp("kinds")) / "ledger.sqlite"

    def tenant(name: str, verifier: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": name,
            "api_keys": [{"plain": KEYS[name]}],
            "models": [MODEL],
            "aggregator": "best_of_n",
            "verifiers": [verifier],
            "prices": {"currency": "USD", "models": {MODEL: PRICE}},
        }

    config = parse_config(
        {
            "demo": True,
            "models": [{"id": MODEL, "path": "models/tiny-arith"}],
            "ledger": {"backend": "sqlite", "path": str(ledger)},
            "defaults": {"policy": "fixed:8", "max_tokens": 24, "extractor": "last_number"},
            "tenants": [
                tenant("checked", {"kind": "checker", "checker": "chain_steps"}),
                tenant(
                    "judged",
                    {
                        "kind": "judge",
                        "name": "grader",
                        "model": MODEL,
                        "read": "answer",
                        "template": "{question}",
                        "max_tokens": 24,
                    },
                ),
            ],
        },
        "verifier kinds test config",
    )
    async with serve_in_loop(create_app(config, engine=engine)) as server:
        yield server


async def ask(
    live: LiveServer,
    tenant: str,
    question: str,
    temperature: float = 1.0,
    seed: int | None = None,
    **t2: Any,
) -> tuple[str, Any, Any]:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
    async with openai.AsyncOpenAI(base_url=live.v1, api_key=KEYS[tenant], max_retries=0) as api:
        resp = await api.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=temperature,
            seed=seed,
            extra_body={"t2": t2} if t2 else None,
        )
    extra = resp.model_extra or {}
    return resp.choices[0].message.content or "", extra["t2"], resp.usage


async def test_best_of_n_with_the_step_checker_returns_fully_right_chains(live: LiveServer) -> None:
    """Eight samples at ~45% single-sample accuracy: a fully right chain is among them all but
    ~1% of the time, so the draws are seeded (the same eight every run, each with one); the
    checker must pick it (a vote returns any carrier of the answer)."""
    for seed, question in enumerate(QUESTIONS):
        text, t2, usage = await ask(live, "checked", question, seed=seed)
        assert t2["aggregator"] == "best_of_n" and t2["note"] is None
        assert t2["verifier"] == "chain_steps" and t2["verifier_tokens"] == 0
        assert usage.model_extra.get("verifier_tokens") == 0
        assert chain_steps(question, text) == 1.0, (question, text, t2["votes"])


async def test_the_judge_grades_by_its_own_answer_and_its_compute_is_billed(
    live: LiveServer,
) -> None:
    state = live.app.state.t2
    for question in QUESTIONS[:2]:
        _, t2, usage = await ask(live, "judged", question)
        assert t2["verifier"] == "grader" and t2["note"] is None
        # the judge answered greedily once per wave: its tokens are counted and billed
        assert t2["verifier_tokens"] > 0 and usage.model_extra["verifier_tokens"] > 0
        # billing charges computed tokens (t2.billed_*), not usage's whole prompt
        prompt, completion = t2["billed_prompt_tokens"], t2["billed_completion_tokens"]
        generated = (prompt * 1.0 + completion * 2.0) / 1e6
        assert t2["cost"] == pytest.approx(generated + t2["verifier_cost"], rel=1e-6)
        assert t2["verifier_cost"] == pytest.approx(
            t2["verifier_tokens"] * 1.5e-6, rel=0.5
        )  # between the prompt and the completion price
        greedy, _, _ = await ask(live, "judged", question, 0.0, aggregator="majority")
        judged = last_number(greedy)  # what the judge (this model, temperature 0) would say
        if judged in t2["votes"]:
            assert t2["answer"] == judged
    tenant = state.config.tenants[1]
    logs = await state.billing.spend_logs([tenant.id], 0, 2e12)
    assert logs and sum(r.money for r in logs) > 0
    assert any(r.prompt_tokens > 0 for r in logs)


async def test_an_unknown_verifier_name_is_a_400_naming_t2_verifier(
    live: LiveServer, openai_client: OpenClient
) -> None:
    api = openai_client(live.v1, KEYS["checked"])
    with pytest.raises(openai.BadRequestError) as err:
        await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTIONS[0]}],
            extra_body={"t2": {"verifier": "nope"}},
        )
    assert err.value.body["param"] == "t2.verifier"  # type: ignore[index]
