"""TenantPacer: λ from a tenant's windows (pure logic on the shared PacingController)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.budget import Cost, PacingSettings, TenantPacer, WindowUsage
from controller.budget.ledger import Limit
from controller.budget.windows import span

NOON = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()


def usage(spent: float, now: float = NOON, name: str = "day", limit: float = 100.0) -> WindowUsage:
    return WindowUsage(Limit(span(name, False, now), "currency", limit, True), Cost(spent), Cost())  # type: ignore[arg-type]


def pacer(**settings: float) -> TenantPacer:
    return TenantPacer(PacingSettings(**settings), {"currency": 1.0, "flops": 1e-9})  # type: ignore[arg-type]


def test_lambda_tracks_spend_against_elapsed_time() -> None:
    p = pacer(target_fraction=1.0)
    on_track = p.price([usage(50.0)], NOON, "currency")
    assert on_track == pytest.approx(1.0)  # spent = limit × half a day: λ₀
    ahead = p.price([usage(60.0)], NOON, "currency")
    behind = p.price([usage(40.0)], NOON, "currency")
    assert ahead is not None and behind is not None
    assert ahead > 1.0 > behind
    assert ahead == pytest.approx(1 / behind)  # symmetric in log space


def test_the_tightest_window_binds_and_unlimited_windows_do_not_count() -> None:
    p = pacer(target_fraction=1.0)
    tracked = WindowUsage(
        Limit(span("month", False, NOON), "currency", 0.0, False), Cost(1e9), Cost()
    )
    hour = usage(10.0, name="hour", limit=10.0)  # the hour's budget is already gone
    lam = p.price([usage(50.0), hour, tracked], NOON, "currency")
    assert lam is not None and lam > p.price([usage(50.0)], NOON, "currency")  # type: ignore[operator]
    assert p.price([tracked], NOON, "currency") is None


def test_a_new_window_starts_from_the_last_price() -> None:
    p = pacer(target_fraction=1.0)
    late = datetime(2026, 6, 1, 23, 59, tzinfo=UTC).timestamp()
    hot = p.price([usage(99.9, now=late)], late, "currency")  # on track: λ ≈ λ₀
    hotter = p.price([usage(120.0, now=late)], late, "currency")
    assert hot is not None and hotter is not None and hotter > hot
    tomorrow = datetime(2026, 6, 2, tzinfo=UTC).timestamp()  # 00:00 UTC: nothing elapsed
    fresh = p.price([usage(0.0, now=tomorrow)], tomorrow, "currency")
    assert fresh == pytest.approx(hotter, rel=1e-3)  # zero surplus at the start: the carried λ


def test_disabled_pacing_and_a_configured_initial_price() -> None:
    assert pacer().price([usage(50.0)], NOON, "currency") is not None
    off = TenantPacer(PacingSettings(enabled=False), {"currency": 1.0})
    assert off.price([usage(50.0)], NOON, "currency") is None
    fixed = TenantPacer(PacingSettings(initial_price=7.0, target_fraction=1.0), {"currency": 1.0})
    assert fixed.price([usage(50.0)], NOON, "currency") == pytest.approx(7.0)
