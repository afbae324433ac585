"""I/O verifiers: the HTTP verifier against a real loopback server, and failures degrading."""

import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from controller.aggregate import Candidate, aggregate, get_extractor, score_candidates
from server.config import VerifierModelConfig
from server.engine.pooling import PoolingService
from server.verifiers import HttpVerifier, RewardModelVerifier
from tests.fixtures.scorer import json_score, serve_scorer


def ducks_rule(path: str, body: dict[str, Any]) -> tuple[int, bytes | None]:
    """1.0 when the candidate ends in the right number, 0.1 otherwise; /broken → 503."""
    if path == "/broken":
        return 503, None
    if path == "/garbage":
        return 200, b"not json"
    return json_score(1.0 if body["candidate"].rstrip(".").endswith("18") else 0.1)


@pytest.fixture(scope="module")
def scorer_url() -> Iterator[str]:
    with serve_scorer(ducks_rule) as scorer:
        yield scorer.url


TEXTS = ["so she makes 20.", "she makes $18.", "answer 20", "that is 18."]


async def test_http_verifier_scores_and_drives_best_of_n(scorer_url: str) -> None:
    verifier = HttpVerifier(f"{scorer_url}/score")
    try:
        outcome = await score_candidates(verifier, "Janet's ducks...", TEXTS)
    finally:
        await verifier.aclose()
    assert outcome.error is None and outcome.scores == [0.1, 1.0, 0.1, 1.0]
    extract = get_extractor("last_number")
    cands = [Candidate(extract(t), score=s) for t, s in zip(TEXTS, outcome.scores, strict=True)]
    assert aggregate(cands, "majority").answer == "20"  # 20 appears first on a 2-2 tie
    result = aggregate(cands, "verifier")
    assert result.answer == "18" and result.chosen_index == 1 and not result.degraded


@pytest.mark.parametrize("path", ["/broken", "/garbage"])
async def test_http_verifier_failure_degrades_to_voting(scorer_url: str, path: str) -> None:
    verifier = HttpVerifier(f"{scorer_url}{path}")
    try:
        outcome = await score_candidates(verifier, "q", TEXTS)
    finally:
        await verifier.aclose()
    assert outcome.scores is None and outcome.error is not None
    extract = get_extractor("last_number")
    result = aggregate(
        [Candidate(extract(t)) for t in TEXTS], "best_of_n", verifier_error=outcome.error
    )
    assert result.degraded and result.answer == "20"
    assert result.note is not None and outcome.error in result.note


async def test_http_verifier_unreachable_is_an_error() -> None:
    verifier = HttpVerifier("http://127.0.0.1:9/score", timeout_s=0.5)
    try:
        outcome = await score_candidates(verifier, "q", ["a"])
    finally:
        await verifier.aclose()
    assert outcome.scores is None and "http" in (outcome.error or "")


async def test_http_verifier_slower_than_its_timeout_is_an_error() -> None:
    def slow(_path: str, _body: dict[str, Any]) -> tuple[int, bytes | None]:
        time.sleep(1.0)
        return json_score(1.0)

    with serve_scorer(slow) as scorer:
        verifier = HttpVerifier(f"{scorer.url}/score", timeout_s=0.2)
        try:
            outcome = await score_candidates(verifier, "q", ["a", "b"])
        finally:
            await verifier.aclose()
    assert outcome.scores is None and "no scores within 0.2 s" in (outcome.error or "")


class PoolingStandIn:
    """Yields outputs shaped like vLLM's PoolingRequestOutput (the real engine: see
    tests/test_reward_model.py)."""

    errored = False

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def encode(self, prompt: Any, pooling_params: Any, request_id: str) -> AsyncIterator[Any]:
        self.prompts.append(prompt)
        assert pooling_params.task == "classify"
        data = torch.tensor([0.9 if "18" in prompt else 0.1])
        yield SimpleNamespace(outputs=SimpleNamespace(data=data), prompt_token_ids=[1] * 7)


async def test_reward_model_verifier_reads_the_pooled_score_and_counts_tokens() -> None:
    engine = PoolingStandIn()
    cfg = VerifierModelConfig(id="rm", url="http://unused")
    pooling = PoolingService(cfg.model_copy(update={"url": None, "path": "x"}), llm=engine)
    verifier = RewardModelVerifier(pooling, "Q: {question}\nA: {candidate}", "rm")
    scores = await verifier.score("ducks?", ["18", "20"])
    assert scores == pytest.approx([0.9, 0.1])
    assert engine.prompts[0] == "Q: ducks?\nA: 18"
    assert verifier.spend.prompt_tokens == 14 and verifier.spend.model == "rm"
