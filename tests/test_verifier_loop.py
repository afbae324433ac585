"""Verifiers in the wave loop (scripted engine, recording billing): scoring wave by wave, billing
the verifier's compute, degrading to a vote when it fails part-way, verifier-aware stopping,
and the text a vote returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest

from controller.aggregate import Candidate, ProgrammaticVerifier, aggregate
from controller.aggregate.checkers import chain_steps
from controller.aggregate.score_map import IsotonicScoreMap, TrafficScoreMap
from server.config import VerifierConfig
from server.engine.service import EngineService
from server.errors import VerifierError
from server.verifiers import JudgeVerifier, ServedVerifier, VerifierSpend
from tests.fakes import ScriptedEngine, cycle
from tests.test_sampling_loop import RecordingBilling, job, make

CHECKER = VerifierConfig(kind="checker", checker="chain_steps")


class FailingSecondCall:
    """Spends 5 prompt tokens per candidate, then raises on its second call (after spending)."""

    name = "judge"

    def __init__(self) -> None:
        self.spend = VerifierSpend("judge-model")
        self.calls = 0

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        self.calls += 1
        self.spend.prompt_tokens += 5 * len(candidates)
        self.spend.completion_tokens += len(candidates)
        if self.calls == 2:
            raise VerifierError("judge engine died")
        return [1.0 if c.endswith("3") else 0.1 for c in candidates]


async def test_a_verifier_failing_mid_request_degrades_to_a_vote_and_still_bills_it() -> None:
    engine = ScriptedEngine(cycle("A: 2", "A: 2", "A: 3"))
    sampler, service = make(engine)
    billing = RecordingBilling()
    scorer = FailingSecondCall()
    cfg = VerifierConfig(kind="judge", model="judge-model")
    verifier = ServedVerifier(cfg, scorer, TrafficScoreMap())
    the_job = job(service, "esc:3", aggregator="best_of_n", max_samples=9)
    out = await sampler.run(the_job, billing, verifier=verifier)
    assert out.waves >= 2 and scorer.calls == 2  # scored wave 1, failed on wave 2, then stopped
    assert out.aggregator == "majority" and out.answer == "2"  # best_of_n would say 3
    assert out.note is not None and "judge engine died" in out.note
    # both calls billed on the judge's model, the failed one too (its tokens were spent)
    assert [(m, p, c) for m, _, p, c in billing.charged] == [
        ("judge-model", 15, 3),
        ("judge-model", 15, 3),
    ]
    generated = sum(p + c for _, p, c in billing.settled)
    assert out.cost == generated + 36 and out.verifier_cost == 36
    assert out.verifier_tokens == 36


async def test_best_of_n_with_the_step_checker_returns_a_right_chain() -> None:
    engine = ScriptedEngine(cycle("1+1=3;A: 3", "1+1=2;A: 2", "1+1=3;A: 3"))
    sampler, service = make(engine)
    verifier = ServedVerifier(
        CHECKER, ProgrammaticVerifier("chain_steps", chain_steps), TrafficScoreMap()
    )
    out = await sampler.run(
        job(service, "fixed:3", aggregator="best_of_n"), RecordingBilling(), verifier=verifier
    )
    assert (out.answer, out.text, out.aggregator) == ("2", "1+1=2;A: 2", "best_of_n")
    assert out.verifier == "chain_steps" and out.verifier_tokens == 0  # a checker is free


async def test_a_majority_vote_returns_the_best_scored_sample_with_the_winning_answer() -> None:
    # the first sample carrying the winner has broken steps, the second is right
    engine = ScriptedEngine(cycle("1+1=5;A: 2", "1+1=2;A: 2", "1+1=3;A: 3"))
    sampler, service = make(engine)
    verifier = ServedVerifier(
        CHECKER, ProgrammaticVerifier("chain_steps", chain_steps), TrafficScoreMap()
    )
    plain = await sampler.run(job(service, "fixed:3"), RecordingBilling())
    assert plain.text == "1+1=5;A: 2"  # without a verifier: the first with the answer
    out = await sampler.run(job(service, "fixed:3"), RecordingBilling(), verifier=verifier)
    assert (out.answer, out.text, out.aggregator) == ("2", "1+1=2;A: 2", "majority")


async def test_sampling_stops_once_a_sample_is_calibrated_likely_right() -> None:
    engine = ScriptedEngine(cycle("1+1=3;A: 3", "1+1=2;A: 2"))
    sampler, service = make(engine)
    cfg = CHECKER.model_copy(update={"stop_at": 0.9})
    verifier = ServedVerifier(
        cfg, ProgrammaticVerifier("chain_steps", chain_steps), TrafficScoreMap()
    )
    # esc draws a wave of 2, then more until 2 agree: the right chain in wave 1 stops it
    the_job = job(service, "esc:2", aggregator="best_of_n", max_samples=12)
    out = await sampler.run(the_job, RecordingBilling(), verifier=verifier)
    assert out.stop_reason == "verified" and out.samples == 2 and out.text == "1+1=2;A: 2"
    unverified = await sampler.run(the_job, RecordingBilling())
    assert unverified.stop_reason != "verified"


def test_a_few_labels_give_a_map_that_keeps_the_verifiers_order() -> None:
    """Under MIN_ISOTONIC labels the map is a logistic fit; it must never invert the
    verifier's order (higher score, lower probability) any more than the isotonic fit can."""
    rising = IsotonicScoreMap().fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]).predict([0.1, 0.5, 0.9])
    assert rising[0] < 0.1 < 0.9 < rising[2] and list(rising) == sorted(rising)
    falling = IsotonicScoreMap().fit([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]).predict([0.1, 0.9])
    assert falling == pytest.approx([0.5, 0.5])  # flat at the labels' mean, not inverted


def test_isotonic_calibration_is_monotone_and_refreshes_from_traffic() -> None:
    cal = IsotonicScoreMap().fit([0.1, 0.2, 0.3, 0.8, 0.9] * 10, [0, 0, 1, 1, 1] * 10)
    p = cal.predict([0.0, 0.25, 0.5, 1.0])
    assert list(p) == sorted(p) and p[0] < 0.1 and p[-1] > 0.9
    again = IsotonicScoreMap.from_dict(cal.to_dict())
    assert list(again.predict([0.25])) == list(cal.predict([0.25]))
    traffic = TrafficScoreMap(cal, refit_every=8)
    before = traffic.predict([0.85])[0]
    # clear answers where high scores disagree with the answer: the map comes down
    refit = False
    for _ in range(20):
        refit |= traffic.observe([0.85] * 2 + [0.1] * 6, ["9", "9"] + ["2"] * 6, "2")
    assert refit and traffic.predict([0.85])[0] < before


def test_vote_score_combines_votes_and_the_best_score() -> None:
    c = [Candidate("1", score=0.2), Candidate("1", score=0.3), Candidate("2", score=0.9)]
    assert aggregate(c, "vote_score").answer == "2"  # 2 × 0.3 < 1 × 0.9
    c.append(Candidate("1", score=0.35))
    assert aggregate(c, "vote_score").answer == "1"  # 3 × 0.35 > 0.9
    assert aggregate(c, "majority").chosen_index == 3  # best-scored carrier of the winner


async def test_only_a_yes_no_judge_asks_its_engine_for_logprobs() -> None:
    """A yes/no judge reads its confidence from the reply's logprob; the other reads need none,
    so their engine computes none."""
    reads: tuple[tuple[Literal["text", "yes_no", "answer"], bool], ...] = (
        ("yes_no", True),
        ("text", False),
        ("answer", False),
    )
    for read, asked in reads:
        engine = ScriptedEngine(cycle("yes 1"))
        judge = JudgeVerifier(
            EngineService("judge-model", {}, engine),
            VerifierConfig(kind="judge", model="judge-model", read=read),
            "last_number",
            "judge",
        )
        await judge.score("Q: 1+0=?", ["A: 1"])
        assert [c.params.sample_logprob for c in engine.calls] == [asked], read
