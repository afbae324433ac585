"""The generic pacing controller: a rate steered to its target, for samples or spend."""

import random

import pytest

from controller.pacing import PacingController


def test_overspend_raises_price_and_underspend_lowers_it() -> None:
    pacer = PacingController(target=4.0, initial_price=0.01)
    assert pacer.record(10.0) > 0.01
    pacer2 = PacingController(target=4.0, initial_price=0.01)
    assert pacer2.record(1.0) < 0.01


def test_decreasing_knob_moves_the_other_way() -> None:
    pacer = PacingController(target=4.0, initial_price=0.95, max_price=0.999, increasing=False)
    assert pacer.record(10.0) < 0.95


def test_synthetic_consumer_converges_to_target_rate() -> None:
    """A consumer whose usage falls with price, started far off, ends within 5% of target."""
    rng = random.Random(0)
    pacer = PacingController(target=4.0, initial_price=1e-4)
    for _ in range(1000):
        demand = max(1.0, min(40.0, 2.0 / pacer.price**0.3 * rng.uniform(0.5, 1.5) / 10))
        pacer.record(round(demand))
    assert pacer.rate == pytest.approx(4.0, rel=0.05)


def test_spend_tracks_budget_times_elapsed_fraction() -> None:
    """Per-tenant pacing: progress in window fractions, target = the window's budget."""
    pacer = PacingController(target=100.0, initial_price=1.0, horizon=0.05)
    spent = 0.0
    for _ in range(200):
        step = 0.005
        spend = 1.2 / pacer.price  # demand that would overspend at λ = 1
        pacer.record(spend, step)
        spent += spend
    assert spent == pytest.approx(100.0, rel=0.05)
    assert pacer.headroom(0.0) == pytest.approx(100.0 - spent)


def test_state_round_trip_and_validation() -> None:
    pacer = PacingController(target=2.0)
    pacer.record(5.0, 1.0)
    other = PacingController(target=2.0)
    other.restore(pacer.state())
    assert other.price == pacer.price
    with pytest.raises(ValueError):
        PacingController(target=0.0)
    with pytest.raises(ValueError):
        pacer.record(-1.0)


def test_second_integral_removes_the_surplus_offset() -> None:
    """λ₀ far below the price that meets the target: the plain controller settles with a
    standing surplus (mean above target); the second integral pays it back."""

    def run(integral_gain: float) -> PacingController:
        pacer = PacingController(
            target=4.0, initial_price=1e-3, horizon=5.0, integral_gain=integral_gain
        )
        for _ in range(1000):
            pacer.record(min(40.0, max(1.0, 0.04 / pacer.price)))  # needs λ ≈ 0.01
        return pacer

    plain, integral = run(0.0), run(1.0)
    assert plain.surplus > 20
    assert abs(integral.surplus) < 0.25 * abs(plain.surplus)
    assert integral.rate == pytest.approx(4.0, rel=0.01)
    resumed = PacingController(target=4.0, initial_price=1e-3, horizon=5.0, integral_gain=1.0)
    resumed.restore(integral.state())
    assert resumed.price == pytest.approx(integral.price)
