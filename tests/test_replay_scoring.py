"""Replay scoring on a fixture where right and wrong answers are mixed
(tests/data/replay_mixed.jsonl): a majority that is wrong, samples flagged incorrect, a
minority holding the gold answer, gold that overrides misleading `correct` flags. A scorer that
always says "correct" (or always trusts the flags) gets a different accuracy on every test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.aggregate import get_extractor
from controller.policy.base import Caps
from controller.policy.factory import make_policy
from controller.replay import load_replay, replay
from controller.replay.data import ReplayQuestion
from controller.replay.run import run_question

DATA = Path(__file__).parent / "data" / "replay_mixed.jsonl"
# The verdict of a vote over all of a question's samples, worked out by hand.
VOTED_RIGHT = {
    "majority-right": True,  # 5, 7, 5, 5 → 5 = gold
    "majority-wrong": False,  # 8, 3, 8 → 8; the gold 3 is in the minority
    "flags-all-wrong": False,  # no gold: the returned sample is flagged incorrect
    "flags-majority-right": True,  # no gold: y wins, and y's samples are flagged correct
    "text-wrong": False,  # answers extracted from the text: 12, gold 10
    "normalised-right": True,  # 18.0 and $18 normalise to the gold 18
    "gold-beats-flags": True,  # gold decides; the flags say the opposite
}
# Share of each question's samples that are right: a single sample's expected accuracy.
SINGLE_RIGHT = {
    "majority-right": 3 / 4,
    "majority-wrong": 1 / 3,
    "flags-all-wrong": 0.0,
    "flags-majority-right": 2 / 3,
    "text-wrong": 0.0,
    "normalised-right": 1.0,
    "gold-beats-flags": 2 / 3,
}


def questions() -> list[ReplayQuestion]:
    loaded, _ = load_replay(DATA, get_extractor("answer_is,last_number"))
    return list(loaded)


def test_each_question_is_scored_right_or_wrong() -> None:
    loaded = questions()
    assert {q.id for q in loaded} == VOTED_RIGHT.keys()
    for q in loaded:
        order = list(range(len(q.samples)))
        outcome = run_question(q, order, make_policy("fixed:all"), Caps(max_samples=100))
        assert outcome.correct is VOTED_RIGHT[q.id], q.id
        assert outcome.samples == len(q.samples)


def test_a_vote_over_every_sample_gets_the_hand_worked_accuracy() -> None:
    result = replay(questions(), "fixed:all", perms=3)
    assert result.accuracy == pytest.approx(4 / 7)


def test_one_sample_scores_the_share_of_right_samples() -> None:
    result = replay(questions(), "fixed:1", perms=3000, seed=5)
    expected = sum(SINGLE_RIGHT.values()) / len(SINGLE_RIGHT)  # 0.488
    assert result.accuracy == pytest.approx(expected, abs=0.03)
    lo, hi = result.accuracy_ci95
    assert lo <= expected <= hi


def test_the_cli_reports_the_same_accuracy() -> None:
    result = CliRunner().invoke(
        app, ["replay", "--data", str(DATA), "--policy", "fixed:all", "--perms", "2", "--json"]
    )
    assert result.exit_code == 0, result.stdout
    obj = json.loads(result.stdout.strip().splitlines()[-1])
    assert obj["accuracy"] == pytest.approx(4 / 7, abs=1e-6) and obj["questions"] == 7
