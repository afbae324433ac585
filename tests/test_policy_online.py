"""The online rule (controller.policy.online): causal, Adaptive-Consistency at cold start, and
it learns from the traffic it has finished (pure logic: real Policy objects, made-up streams)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from controller.policy import Caps, make_policy
from controller.policy.online import (
    Online,
    capped,
    fit_share_prior,
    flat_prior,
    histogram,
    leader_is_mode,
)
from controller.replay import ReplayQuestion, ReplaySample
from controller.replay.run import run_question

CAPS = Caps(max_samples=40)


def _question(i: int, rng: random.Random, n: int = 40) -> ReplayQuestion:
    """A question whose leader holds a random share; stragglers spread over a few answers."""
    share = rng.choice([0.95, 0.9, 0.7, 0.5, 0.35])
    answers = ["a" if rng.random() < share else f"w{rng.randrange(4)}" for _ in range(n)]
    samples = tuple(ReplaySample(a, None, None) for a in answers)
    return ReplayQuestion(f"q{i}", "a", samples, i)


def _stream(questions: list[ReplayQuestion], policy: Online, seed: int = 0) -> list[int]:
    """Samples drawn per question, in stream order, the policy learning as it goes."""
    rng = random.Random(seed)
    drawn = []
    for q in questions:
        order = list(range(len(q.samples)))
        rng.shuffle(order)
        outcome = run_question(q, order, policy, CAPS)
        policy.observe(outcome.answers)
        drawn.append(outcome.samples)
    return drawn


def test_histogram_tracks_the_top_three_and_the_rest() -> None:
    assert histogram(["x", "y", "x", None, "z", "w", "v", "x"]) == (3, 1, 1, 2)
    assert histogram([None, None]) == (0, 0, 0, 0)
    assert sum(capped((200, 100, 0, 20))) <= 64


def test_a_decision_sees_only_earlier_questions_never_gold() -> None:
    rng = random.Random(1)
    questions = [_question(i, rng) for i in range(120)]
    base = _stream(questions, Online(0.01))
    # later questions replaced by others, and every gold changed: the first 60 decide alike
    other = random.Random(2)
    changed = [replace(q, gold="nope") for q in questions[:60]]
    changed += [_question(i, other) for i in range(60, 120)]
    again = _stream(changed, Online(0.01))
    assert again[:60] == base[:60]
    assert again[60:] != base[60:]  # the comparison can fail: later traffic does differ


def test_cold_start_is_adaptive_consistency() -> None:
    rng = random.Random(3)
    questions = [_question(i, rng) for i in range(20)]
    online = Online(0.01, min_history=20)
    ac = make_policy("adaptive_consistency:0.95")
    rng_a, rng_b = random.Random(9), random.Random(9)
    saved = 0
    for q in questions:
        order = list(range(len(q.samples)))
        rng_a.shuffle(order)
        rng_b.shuffle(order_b := list(range(len(q.samples))))
        mine = run_question(q, order, online, CAPS)
        theirs = run_question(q, order_b, ac, CAPS)
        online.observe(mine.answers)
        # AC's own stops; plus, near the cap, a stop once no draw left can change the answer
        assert mine.correct == theirs.correct
        assert mine.samples == theirs.samples or (
            mine.samples < theirs.samples and theirs.reason == "max_samples"
        )
        saved += theirs.samples - mine.samples
    assert saved > 0  # the cap-aware stop did act here
    assert not online.cold


def test_it_learns_how_decisive_this_traffic_is() -> None:
    unanimous = Online(0.01)
    unanimous.load({(10, 0, 0, 0): 200, (9, 1, 0, 0): 20})
    split = Online(0.01)
    split.load({(7, 3, 0, 0): 100, (6, 3, 1, 0): 100})  # a clear mode, often overtaken early
    three_nil = ["a", "a", "a"]
    assert unanimous.start(CAPS).decide(three_nil).stop
    assert not split.start(CAPS).decide(three_nil).stop
    # AC (C = 0.95) would not stop at 3-0 either: the learned prior is what stops it
    assert not make_policy("adaptive_consistency").start(CAPS).decide(three_nil).stop


def test_a_lead_the_caps_cannot_overturn_stops() -> None:
    policy = Online(0.0001)
    policy.load({(4, 3, 2, 1): 100})
    answers = ["a", "b", "a", "a", "c", "a"]  # 4-1 with 2 draws left
    assert policy.start(Caps(max_samples=8)).decide(answers).stop
    assert not policy.start(Caps(max_samples=40)).decide(answers).stop


def test_load_is_observe() -> None:
    rng = random.Random(4)
    observed = Online(0.01)
    _stream([_question(i, rng) for i in range(45)], observed)
    loaded = Online(0.01)
    loaded.load(observed.counts)
    assert loaded.seen == observed.seen
    assert leader_is_mode(loaded.pi, (3, 1, 0, 0)) == pytest.approx(
        leader_is_mode(fit_share_prior(observed.counts), (3, 1, 0, 0))
    )


def test_posterior_is_sane_under_the_flat_prior() -> None:
    pi = flat_prior()
    q1, _ = leader_is_mode(pi, (1, 0, 0, 0))
    q4, r4 = leader_is_mode(pi, (4, 0, 0, 0))
    q_tie, _ = leader_is_mode(pi, (3, 3, 0, 0))
    assert q1 < q4 and r4 < 0.1
    assert q_tie == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("spec", ["online", "online:0.005"])
def test_specs(spec: str) -> None:
    assert isinstance(make_policy(spec), Online)


@pytest.mark.parametrize("spec", ["online:0", "online:1", "online:-0.1"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        make_policy(spec)


def test_the_default_tau_is_a_point_of_the_grid_loo_chooses_from() -> None:
    from controller.policy.online import DEFAULT_TAU
    from controller.replay.loo import FAMILIES

    grid = next(f for f in FAMILIES if f.name == "online")
    assert make_policy("online").spec in {make_policy(s).spec for s in grid.settings}
    assert f"online:{DEFAULT_TAU:g}" in grid.settings
