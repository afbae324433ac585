"""Verifier aggregation through the server: a tenant's HTTP scoring service (a real loopback
server) scores every sample of a request and `best_of_n` returns the top-scored one; a dead
service, or a tenant without one, degrades to a majority vote and says so in `t2.note`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from controller.aggregate import get_extractor
from server.app import create_app
from server.config import parse_config
from tests.fixtures.scorer import Scorer, json_score, serve_scorer
from tests.fixtures.server import MODEL, LiveServer, serve_in_loop
from tests.support import free_port

last_number = get_extractor("last_number")  # the test config's extractor

pytestmark = pytest.mark.engine

KEYS = {
    "scored": "verifier-scored-key",
    "dead": "verifier-dead-key",
    "plain": "verifier-plain-key",
    "six": "verifier-six-key",
}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Q: 9+4-6=?"}]


@pytest.fixture(scope="module")
def scorer() -> Iterator[Scorer]:
    """Scores a candidate by its length, so the best is known; records what it was sent."""
    with serve_scorer(lambda _path, body: json_score(float(len(body["candidate"])))) as service:
        yield service


def _prefer_six(_path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    return json_score(SIX_SCORE if last_number(body["candidate"]) == "6" else 1.0)


SIX_SCORE = 10.0  # a sample answering 6 outweighs several answering anything else


@pytest.fixture(scope="module")
def six_scorer() -> Iterator[Scorer]:
    """Scores samples that answer 6 (a wrong answer the model gives now and then) ten times
    higher than the rest, so a weighted vote can overturn the count."""
    with serve_scorer(_prefer_six) as service:
        yield service


@pytest.fixture(scope="module")
async def live(engine: Any, scorer: Scorer, six_scorer: Scorer) -> AsyncIterator[LiveServer]:
    def tenant(name: str, **extra: Any) -> dict[str, Any]:
        return {"id": name, "api_keys": [{"plain": KEYS[name]}], "models": [MODEL], **extra}

    config = parse_config(
        {
            "demo": True,
            "models": [{"id": MODEL, "path": "models/tiny-arith"}],
            "defaults": {"policy": "fixed:4", "max_tokens": 24, "extractor": "last_number"},
            "tenants": [
                tenant("scored", aggregator="best_of_n", verifier={"url": f"{scorer.url}/score"}),
                tenant(
                    "dead",
                    aggregator="best_of_n",
                    verifier={"url": f"http://127.0.0.1:{free_port()}/score", "timeout_s": 2},
                ),
                tenant("plain"),
                tenant("six", verifier={"url": f"{six_scorer.url}/score"}),
            ],
        },
        "verifier test config",
    )
    async with serve_in_loop(create_app(config, engine=engine)) as server:
        yield server


async def ask(
    live: LiveServer, tenant: str, seed: int | None = None, **t2: Any
) -> tuple[str, dict[str, Any]]:
    async with openai.AsyncOpenAI(base_url=live.v1, api_key=KEYS[tenant], max_retries=0) as api:
        resp = await api.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            temperature=1.0,
            seed=seed,
            extra_body={"t2": t2} if t2 else None,
        )
    return resp.choices[0].message.content or "", dict((resp.model_extra or {})["t2"])


async def test_best_of_n_returns_the_top_scored_sample(live: LiveServer, scorer: Scorer) -> None:
    scorer.seen.clear()
    text, t2 = await ask(live, "scored")
    assert t2["aggregator"] == "best_of_n" and t2["note"] is None
    scored = [body["candidate"] for body in scorer.seen]
    assert len(scored) == t2["samples"] == 4  # every sample was scored, once
    assert all("9+4-6" in body["question"] for body in scorer.seen)  # the rendered prompt
    assert text in scored and len(text) == max(map(len, scored))  # a longest one


async def test_a_request_may_weigh_votes_by_the_verifier(
    live: LiveServer, six_scorer: Scorer
) -> None:
    """The answer is the one whose samples' scores add up highest, worked out here from what
    the scorer was sent. Seeded requests (seeds 0-3 each draw one sample answering 6 among
    four) make the weighted vote overturn the count, so counting alone fails this test."""
    overturned = 0
    for seed in range(4):
        six_scorer.seen.clear()
        text, t2 = await ask(live, "six", seed=seed, aggregator="verifier")
        assert t2["aggregator"] == "verifier" and t2["note"] is None
        scored = [body["candidate"] for body in six_scorer.seen]
        assert len(scored) == t2["samples"] == 4
        weights: dict[str, float] = {}
        for candidate in scored:
            answer = last_number(candidate)
            if answer is not None:
                score = SIX_SCORE if answer == "6" else 1.0  # what _prefer_six answered
                weights[answer] = weights.get(answer, 0.0) + score
        weighted = max(weights, key=lambda a: weights[a])
        assert t2["answer"] == weighted, (seed, weights, t2["votes"])
        assert last_number(text) == weighted
        overturned += t2["votes"][weighted] < max(t2["votes"].values())
    assert overturned >= 1  # at least one seed where the count alone picks another answer


@pytest.mark.parametrize(
    ("tenant", "reason"),
    [("dead", "verifier of dead"), ("plain", "no verifier is configured")],
)
async def test_without_a_working_verifier_the_vote_decides(
    live: LiveServer, tenant: str, reason: str
) -> None:
    text, t2 = await ask(live, tenant, aggregator="best_of_n")
    assert t2["aggregator"] == "majority"
    assert reason in t2["note"] and "fell back to majority vote" in t2["note"]
    assert text  # still answered
