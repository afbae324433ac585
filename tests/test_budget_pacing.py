"""TenantPacer: a tenant's ComputePrice from its windows (pure logic on the PacingController).

Cap mode (the default) adds pressure only while a window burns ahead of pace; spend mode (the
opt-in, for a prepaid allotment) steers spend toward the limit both ways."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controller.budget import Cost, PacingSettings, WindowUsage
from controller.budget.ledger import Limit
from controller.budget.windows import span
from controller.pacing import ComputePrice, TenantPacer

NOON = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()


def usage(spent: float, now: float = NOON, name: str = "day", limit: float = 100.0) -> WindowUsage:
    return WindowUsage(Limit(span(name, False, now), "currency", limit, True), Cost(spent), Cost())  # type: ignore[arg-type]


def pacer(**settings: Any) -> TenantPacer:
    return TenantPacer(PacingSettings(**settings), {"currency": 1.0, "flops": 1e-9})


def lam(price: ComputePrice | None) -> float:
    assert price is not None
    return price.lam


def test_spend_mode_tracks_spend_against_elapsed_time() -> None:
    p = pacer(target_fraction=1.0, mode="spend")
    on_track = p.price([usage(50.0)], NOON, "currency")
    assert lam(on_track) == pytest.approx(1.0)  # spent = limit × half a day: λ₀
    assert on_track is not None and on_track.unit == "currency" and on_track.mode == "spend"
    ahead = lam(p.price([usage(60.0)], NOON, "currency"))
    behind = lam(p.price([usage(40.0)], NOON, "currency"))
    assert ahead > 1.0 > behind
    assert ahead == pytest.approx(1 / behind)  # symmetric in log space


def test_cap_mode_is_silent_on_pace_and_only_ever_adds_pressure() -> None:
    p = pacer(target_fraction=1.0)
    assert p.price([usage(40.0)], NOON, "currency") is None  # behind pace: the cap is far
    assert p.price([usage(50.0)], NOON, "currency") is None  # exactly on pace
    ahead = p.price([usage(60.0)], NOON, "currency")
    assert ahead is not None and ahead.mode == "cap" and ahead.lam > 1.0
    # a cap is a floor under the policy's own per-sample λ: it raises, never lowers
    assert ahead.combine(own=0.5, cost_per_sample=1.0, cost_unit="currency") == ahead.lam
    assert ahead.combine(own=1e6, cost_per_sample=1.0, cost_unit="currency") == 1e6


def test_the_tightest_window_binds_and_unlimited_windows_do_not_count() -> None:
    p = pacer(target_fraction=1.0, mode="spend")
    tracked = WindowUsage(
        Limit(span("month", False, NOON), "currency", 0.0, False), Cost(1e9), Cost()
    )
    hour = usage(10.0, name="hour", limit=10.0)  # the hour's budget is already gone
    assert lam(p.price([usage(50.0), hour, tracked], NOON, "currency")) > lam(
        p.price([usage(50.0)], NOON, "currency")
    )
    assert p.price([tracked], NOON, "currency") is None


def test_a_new_window_starts_from_the_last_price_in_spend_mode_only() -> None:
    late = datetime(2026, 6, 1, 23, 59, tzinfo=UTC).timestamp()
    tomorrow = datetime(2026, 6, 2, tzinfo=UTC).timestamp()  # 00:00 UTC: nothing elapsed
    spend = pacer(target_fraction=1.0, mode="spend")
    hot = lam(spend.price([usage(99.9, now=late)], late, "currency"))  # on track: λ ≈ λ₀
    hotter = lam(spend.price([usage(120.0, now=late)], late, "currency"))
    assert hotter > hot
    fresh = lam(spend.price([usage(0.0, now=tomorrow)], tomorrow, "currency"))
    assert fresh == pytest.approx(hotter, rel=1e-3)  # zero surplus at the start: the carried λ
    cap = pacer(target_fraction=1.0)
    assert lam(cap.price([usage(120.0, now=late)], late, "currency")) > 1.0
    assert cap.price([usage(0.0, now=tomorrow)], tomorrow, "currency") is None  # a fresh cap


def test_disabled_pacing_and_a_configured_initial_price() -> None:
    assert pacer(mode="spend").price([usage(50.0)], NOON, "currency") is not None
    off = TenantPacer(PacingSettings(enabled=False, mode="spend"), {"currency": 1.0})
    assert off.price([usage(50.0)], NOON, "currency") is None
    fixed = TenantPacer(
        PacingSettings(initial_price=7.0, target_fraction=1.0, mode="spend"), {"currency": 1.0}
    )
    assert lam(fixed.price([usage(50.0)], NOON, "currency")) == pytest.approx(7.0)


def test_a_price_in_one_unit_cannot_price_samples_costed_in_another() -> None:
    price = ComputePrice(1e-3, "currency")
    assert price.per_sample(2.0, "currency") == pytest.approx(2e-3)
    assert ComputePrice(0.01).per_sample(123.0, "flops") == 0.01  # per sample already
    with pytest.raises(ValueError, match="cannot price"):
        price.per_sample(2.0, "flops")
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            ComputePrice(bad)
