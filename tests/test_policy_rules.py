"""Stopping rules against hand-computed values, caps, specs and the t2 policy's behaviour."""

import pytest

from controller.policy import (
    T2,
    Caps,
    LeaderPrior,
    beta_confidence,
    fit_leader_prior,
    leader_probability,
    make_policy,
)

CAPS = Caps(max_samples=40)


def votes(a: int, b: int) -> list[str | None]:
    out: list[str | None] = ["x"] * a
    return out + ["y"] * b


@pytest.mark.parametrize(
    ("v1", "v2", "stops", "confidence"),
    [
        (4, 0, True, 1 - 0.5**5),  # 0.96875
        (3, 0, False, 1 - 0.5**4),  # 0.9375
        (6, 1, True, 1 - 9 / 256),  # I_.5(7, 2) = P(Bin(8, .5) >= 7)
        (5, 1, False, 1 - 8 / 128),  # I_.5(6, 2) = P(Bin(7, .5) >= 6)
    ],
)
def test_adaptive_consistency_beta_rule(v1: int, v2: int, stops: bool, confidence: float) -> None:
    assert beta_confidence(v1, v2) == pytest.approx(confidence)
    run = make_policy("adaptive_consistency").start(CAPS)
    decision = run.decide(votes(v1, v2))
    assert decision.stop is stops
    assert decision.reason == ("converged" if stops else None)
    assert run.predicted_accuracy == pytest.approx(confidence)


def test_adaptive_consistency_ignores_abstentions_and_third_answers() -> None:
    run = make_policy("adaptive_consistency:0.95").start(CAPS)
    assert not run.decide([None, None]).stop
    assert run.decide(["x", None, "x", "x", None, "x"]).stop
    assert not run.decide(["x", "z", "x", "x", "x", "x", "y"]).stop  # 5-1 (z, y tie at 1)


def test_esc_window_rule() -> None:
    run = make_policy("esc:5").start(CAPS)
    assert run.decide([]).wave == 5
    assert run.decide(["a"] * 5).stop
    assert run.decide(["a"] * 5).reason == "converged"
    assert run.decide(["a", "a", "a", "a", "b"]).wave == 5
    # unanimity that straddles a window boundary does not count
    assert not run.decide(["b", "a", "a", "a", "a", "a", "a", "a", "a", "c"]).stop
    assert run.decide(["b", "a", "a", "a", "a"] + ["c"] * 5).stop
    # an abstention breaks unanimity; a partial window is completed first
    assert not run.decide(["a", "a", None, "a", "a"]).stop
    assert run.decide(["a"] * 7).wave == 3


def test_margin_rule_stops_at_a_lead_of_m_whatever_the_count() -> None:
    run = make_policy("margin:4").start(CAPS)
    assert run.decide([]).wave == 4  # four votes are the fewest that can make a lead of 4
    assert run.decide(["a"] * 4).reason == "converged"
    assert run.decide(["a", "b", "a"]).wave == 3  # lead 1: at least 3 more
    # a close race stops as soon as one answer is 4 ahead (AC would need a far larger lead)
    race = ["a", "b"] * 6 + ["a"] * 4
    assert run.decide(race).stop
    assert not make_policy("adaptive_consistency").start(CAPS).decide(race).stop
    assert not run.decide(race[:-1]).stop
    # abstentions and third answers never count toward the lead
    assert not run.decide(["a", None, "a", "c", "a", None]).stop
    assert run.decide(["a", None, "a", "c", "a", "a", "a"]).stop  # 5 vs 1
    assert make_policy("margin:1").start(CAPS).decide(["z"]).stop


def test_fixed_draws_k_in_one_wave() -> None:
    run = make_policy("fixed:5").start(CAPS)
    assert run.decide([]).wave == 5
    assert run.decide(["a"] * 5).reason == "fixed"
    assert make_policy("fixed:all").start(Caps(max_samples=7)).decide([]).wave == 7


def test_caps_clamp_waves_and_name_the_binding_cap() -> None:
    fixed = make_policy("fixed:10")
    assert fixed.start(Caps(max_samples=4)).decide([]).wave == 4
    assert fixed.start(Caps(max_samples=4)).decide(["a"] * 4).reason == "max_samples"
    by_cost = Caps(max_samples=40, cost_per_sample=2.5, max_cost=10.0)
    assert fixed.start(by_cost).decide([]).wave == 4
    assert fixed.start(by_cost).decide(["a"] * 4).reason == "max_cost"
    budget = Caps(max_samples=40, budget_samples=3)
    assert fixed.start(budget).decide(["a"] * 3).reason == "budget"
    ac = make_policy("adaptive_consistency").start(Caps(max_samples=3))
    assert ac.decide(["a", "b", "a"]).reason == "max_samples"


def test_policy_specs() -> None:
    assert make_policy("ac:0.9").spec == "adaptive_consistency:0.9"
    assert make_policy("esc").spec == "esc:5"
    t2 = make_policy("t2:lam=0.01,value=2,wave=4,upfront")
    assert isinstance(t2, T2)
    assert (t2.lam, t2.value_per_correct, t2.wave, t2.upfront) == (0.01, 2.0, 4, True)
    assert isinstance(make_policy("t2:0.005"), T2)
    assert make_policy("margin").spec == "margin:4"
    assert make_policy("margin:2.5").spec == "margin:2.5"
    bad_specs = ("fixed", "fixed:0", "fixed:x", "ac:1.5", "esc:0", "margin:0", "margin:x")
    for bad in (*bad_specs, "t2:foo=1", "t2:abc", "nope"):
        with pytest.raises(ValueError):
            make_policy(bad)


def test_t2_posterior_reduces_to_adaptive_consistency_under_a_uniform_prior() -> None:
    uniform = LeaderPrior(1.0, 1.0)
    for v1, v2 in [(1, 0), (3, 0), (4, 2), (7, 5)]:
        assert leader_probability(uniform, v1, v2) == pytest.approx(beta_confidence(v1, v2))


def test_t2_informed_prior_is_more_confident_in_early_unanimity() -> None:
    skewed = LeaderPrior(6.0, 1.0)
    assert leader_probability(skewed, 2, 0) > leader_probability(LeaderPrior(1, 1), 2, 0)


def test_t2_stop_rule_trades_value_against_price() -> None:
    free = T2(lam=0.0).start(CAPS)
    assert not free.decide(votes(10, 9)).stop
    pricey = T2(lam=10.0).start(CAPS)
    decision = pricey.decide(votes(1, 0))
    assert decision.stop and decision.reason == "marginal_value"
    cheap = T2(lam=1e-4, prior=LeaderPrior(1.0, 1.0)).start(CAPS)
    assert not cheap.decide(votes(2, 1)).stop  # a close race is worth a cheap sample
    assert cheap.decide(votes(30, 0)).stop  # a landslide is not
    assert cheap.predicted_accuracy is not None and cheap.predicted_accuracy > 0.99
    assert not cheap.decide([]).stop  # no answer yet: draw


def test_t2_caps_still_bind() -> None:
    run = T2(lam=0.0).start(Caps(max_samples=6))
    assert run.decide(votes(3, 3)).reason == "max_samples"


def test_t2_upfront_mode_picks_k_once_and_k_falls_with_price() -> None:
    prior = LeaderPrior(3.0, 1.5)
    cheap = T2(lam=1e-4, prior=prior, upfront=True)
    dear = T2(lam=0.05, prior=prior, upfront=True)
    k_cheap = cheap.start(CAPS).decide([]).wave
    k_dear = dear.start(CAPS).decide([]).wave
    assert 1 <= k_dear < k_cheap <= 40
    run = cheap.start(CAPS)
    k = run.decide([]).wave
    assert run.decide(["a"] * k).reason == "marginal_value"
    curve = T2(lam=0.01, upfront=True, curve=lambda k: 1 - 0.5 / k)
    assert curve.upfront_k(0.01, 40) == 7  # 0.5/k² = 0.01 → k ≈ 7.07


def test_t2_refits_its_prior_from_traffic() -> None:
    policy = T2(lam=0.002, min_history=20)
    for i in range(40):
        policy.observe(["a"] * 6 if i % 4 else ["a", "a", "b", "a"])
    assert policy.prior.mean > 0.8
    policy.reset()
    assert policy.prior == policy.initial_prior


def test_prior_fit_is_anchored_when_traffic_carries_no_spread() -> None:
    prior = fit_leader_prior([(1, 1)] * 200)
    assert prior.b > 0.05 and prior.mean < 0.999
