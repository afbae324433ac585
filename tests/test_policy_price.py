"""One price of compute, converted explicitly by each policy; t2's learned state is bounded."""

from __future__ import annotations

import tracemalloc

import pytest

from controller.pacing import REFERENCE_SAMPLE_PRICE, ComputePrice
from controller.policy import Caps, make_policy
from controller.policy.t2 import MAX_PAIR_VOTES, T2

CAPS = Caps(max_samples=40, cost_per_sample=1e-5, cost_unit="currency")
# what a default-config day looks like early on: a tiny λ per currency unit, in cap mode
TINY = ComputePrice(1e-11, "currency", "cap")
DEAR = ComputePrice(REFERENCE_SAMPLE_PRICE * 10 / 1e-5, "currency", "cap")  # 10× the reference


def stops_at(spec: str, answers: list[str], price: ComputePrice | None) -> int:
    """How many of `answers` the policy draws before it stops."""
    run = make_policy(spec).start(CAPS, price)
    drawn: list[str] = []
    while True:
        decision = run.decide(drawn)
        if decision.stop or len(drawn) >= len(answers):
            return len(drawn)
        drawn.extend(answers[len(drawn) : len(drawn) + decision.wave])


@pytest.mark.parametrize("spec", ["esc:5", "adaptive_consistency", "margin:4", "t2"])
def test_a_cap_with_slack_leaves_each_policy_at_its_own_defaults(spec: str) -> None:
    unanimous = ["a"] * 40
    assert stops_at(spec, unanimous, TINY) == stops_at(spec, unanimous, None)


def test_esc_stops_at_the_first_unanimous_window_and_ac_at_095() -> None:
    assert stops_at("esc:5", ["a"] * 40, TINY) == 5
    # AC at C = 0.95 stops once 1 − I_0.5(v1+1, 1) ≥ 0.95: at 4 unanimous votes (0.969)
    assert stops_at("adaptive_consistency", ["a"] * 40, TINY) == 4
    spend = ComputePrice(1e-11, "currency", "spend")  # the opt-in mode may lower the price
    assert stops_at("esc:5", ["a"] * 40, spend) > 5


@pytest.mark.parametrize(
    "spec", ["esc:5", "adaptive_consistency:0.99", "margin:4", "t2:lam=0.0005"]
)
def test_a_cap_under_pressure_makes_each_policy_stop_sooner(spec: str) -> None:
    mixed = ["a", "b", "a", "a", "b", "a", "a", "a", "b", "a"] * 4
    assert stops_at(spec, mixed, DEAR) < stops_at(spec, mixed, None)


def test_margin_shrinks_with_pressure_and_a_cap_never_raises_it() -> None:
    assert stops_at("margin:4", ["a"] * 40, None) == 4
    assert stops_at("margin:4", ["a"] * 40, DEAR) == 1  # 10× dearer: m' = max(1, 0.4)
    half = ComputePrice(REFERENCE_SAMPLE_PRICE * 2 / 1e-5, "currency", "cap")
    assert stops_at("margin:4", ["a"] * 40, half) == 2
    spend = ComputePrice(REFERENCE_SAMPLE_PRICE / 2, mode="spend")  # slack may raise it
    assert stops_at("margin:4", ["a"] * 40, spend) == 8


def test_fixed_k_ignores_every_price() -> None:
    for price in (None, TINY, DEAR, ComputePrice(1.0, mode="spend")):
        assert stops_at("fixed:7", ["a"] * 40, price) == 7


def test_t2_learns_into_a_bounded_count_table() -> None:
    policy = T2(min_history=20, refit_every=50)
    for i in range(3000):
        votes = 1 + i % 200  # many distinct totals, most above the cap
        policy.observe(["a"] * votes + ["b"] * (i % 3))
    assert policy.seen == 3000
    assert all(n <= MAX_PAIR_VOTES for n, _ in policy.counts)
    assert len(policy.counts) <= (MAX_PAIR_VOTES + 1) * (MAX_PAIR_VOTES + 2) // 2
    assert policy.prior.mean > 0.9  # leaders lead by far in this traffic


def test_new_t2_policies_share_their_value_tables() -> None:
    make_policy("t2").start(CAPS).decide(["a"])  # warm the shared table
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = []
    for i in range(200):
        policy = make_policy(f"t2:lam={0.001 + i * 1e-6}")
        policy.start(CAPS).decide(["a", "b", "a"])
        kept.append(policy)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert grown / len(kept) < 10_000  # bytes per policy; a private value table is ~100 KB
