"""Voting, tie-breaking, weighted votes, best-of-N and the verifier fallback."""

import asyncio
from collections.abc import Sequence

import pytest

from controller.aggregate import (
    Candidate,
    ProgrammaticVerifier,
    aggregate,
    answer_matches,
    arithmetic_checker,
    get_extractor,
    score_candidates,
)


def cands(*answers: str | None) -> list[Candidate]:
    return [Candidate(a) for a in answers]


def test_majority_counts_and_agreement() -> None:
    result = aggregate(cands("7", "5", "7", None, "7"))
    assert result.answer == "7"
    assert result.votes == {"7": 3, "5": 1}
    assert result.agreement == pytest.approx(3 / 5)
    assert result.samples_used == 5
    assert result.chosen_index == 0
    assert not result.degraded


def test_tie_goes_to_earliest_first_occurrence() -> None:
    assert aggregate(cands("b", "a", "a", "b")).answer == "b"
    assert aggregate(cands(None, "a", "b", "b", "a")).answer == "a"
    result = aggregate(cands("x", "y"))
    assert (result.answer, result.chosen_index) == ("x", 0)


def test_all_abstain_and_empty() -> None:
    result = aggregate(cands(None, None))
    assert (result.answer, result.agreement, result.chosen_index) == (None, 0.0, 0)
    empty = aggregate([])
    assert (empty.answer, empty.samples_used, empty.chosen_index) == (None, 0, None)


def test_logprob_weighting_can_overturn_a_count() -> None:
    samples = [Candidate("a", logprob=-3.0), Candidate("a", logprob=-3.0), Candidate("b", -0.05)]
    result = aggregate(samples, "logprob")
    assert result.answer == "b"
    assert result.chosen_index == 2
    assert result.votes == {"a": 2, "b": 1}


def test_verifier_weighting_and_best_of_n() -> None:
    samples = [
        Candidate("a", score=0.2),
        Candidate("a", score=0.3),
        Candidate("b", score=0.9),
        Candidate("a", score=0.25),
    ]
    assert aggregate(samples, "verifier").answer == "b"  # 0.9 > 0.75
    best = aggregate(samples, "best_of_n")
    assert (best.answer, best.chosen_index) == ("b", 2)
    samples[3] = Candidate("a", score=0.5)
    verified = aggregate(samples, "verifier")
    assert verified.answer == "a" and verified.chosen_index == 3  # best-scored "a" sample


def test_verifier_failure_degrades_to_voting_and_says_so() -> None:
    samples = [Candidate("a"), Candidate("b", score=1.0), Candidate("a")]
    result = aggregate(samples, "best_of_n")
    assert result.degraded and result.answer == "a" and result.method == "majority"
    assert result.note is not None and "fell back to majority" in result.note
    failed = aggregate(cands("a", "b", "b"), "verifier", verifier_error="http: 503")
    assert failed.degraded and failed.answer == "b" and "http: 503" in (failed.note or "")


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown aggregation method"):
        aggregate(cands("a"), "median")


class Broken:
    name = "broken"

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        raise ConnectionError("refused")


class Short:
    name = "short"

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return [1.0]


class Slow:
    name = "slow"

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        await asyncio.sleep(1.0)
        return [1.0] * len(candidates)


async def test_score_candidates_turns_failures_into_errors() -> None:
    texts = ["x", "y"]
    assert "ConnectionError" in ((await score_candidates(Broken(), "q", texts)).error or "")
    assert "returned 1 scores" in ((await score_candidates(Short(), "q", texts)).error or "")
    slow = await score_candidates(Slow(), "q", texts, timeout_s=0.01)
    assert slow.scores is None and "timed out" in (slow.error or "")


async def test_programmatic_checkers_feed_best_of_n() -> None:
    question = "4 5 6 10"
    texts = [
        "Answer: (6 - 4) * 5 = 24",  # wrong: evaluates to 10
        "Answer: (10 - 6) * 5 + 4 = 24",
        "Answer: 4 * (10 - 6) + 5 + 6 = 24",  # uses 6 twice... and 4 twice: wrong numbers
    ]
    verifier = ProgrammaticVerifier("game24", arithmetic_checker(24))
    outcome = await score_candidates(verifier, question, texts)
    assert outcome.scores == [0.0, 1.0, 0.0]
    extract = get_extractor("answer_is")
    result = aggregate(
        [Candidate(extract(t), score=s) for t, s in zip(texts, outcome.scores, strict=True)],
        "best_of_n",
    )
    assert result.chosen_index == 1
    gold = ProgrammaticVerifier("gold", answer_matches("18.0", get_extractor("last_number")))
    assert await gold.score("q", ["so $18", "17"]) == [1.0, 0.0]
