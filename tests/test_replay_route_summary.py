"""The routing replay's summary: where the route and the baselines reach the reference, and how
far a baseline is above the route at equal cost (controller.replay.route_summary), in the JSON
and in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.replay_route import route_rows, summary_lines
from controller.replay.route_summary import envelope, envelope_at, summarise
from tests.test_replay_route import toy

REF_COST = 2.0


def _point(mode: str, lam: float, accuracy: float, relative_cost: float) -> dict[str, Any]:
    return {"mode": mode, "lam_per_reference": lam, "accuracy": accuracy,
            "cost": relative_cost * REF_COST, "relative_cost": relative_cost}  # fmt: skip


def _entry(route: list[dict[str, Any]], cascade_acc: float = 0.88) -> dict[str, Any]:
    """Reference 0.90 at cost 2; a weak model at 0.70 (cost 0.1), a cascade at 0.5×."""
    return {
        "reference": {"model": "strong", "k": 3, "accuracy": 0.90, "cost": REF_COST},
        "route": route,
        "baselines": {
            "single": [
                {"model": "weak", "k": 1, "accuracy": 0.70, "cost": 0.1},
                {"model": "strong", "k": 1, "accuracy": 0.86, "cost": 1.5},
                {"model": "strong", "k": 3, "accuracy": 0.90, "cost": REF_COST},
            ],
            "vote_cascade": [
                {"models": ["weak", "strong"], "k": 4, "tau": 1.0, "accuracy": cascade_acc,
                 "cost": 1.0},
            ],
        },
    }  # fmt: skip


def test_the_cheapest_route_point_and_baseline_within_half_a_point_are_reported() -> None:
    route = [_point("auto", 0.0, 0.90, 1.1), _point("auto", 0.1, 0.897, 0.6),
             _point("auto", 1.0, 0.80, 0.2), _point("cascade", 0.0, 0.89, 0.9)]  # fmt: skip
    s = summarise(_entry(route, cascade_acc=0.896))
    assert s["auto"]["reaches_reference_at"] == 0.6  # 0.897 is within 0.005 of 0.90
    assert s["auto"]["lam_per_reference_there"] == 0.1
    assert s["cascade"]["reaches_reference_at"] is None  # 0.89 is not
    assert s["cascade"]["best"] == {"accuracy": 0.89, "relative_cost": 0.9}
    cheapest = s["baseline_reaches_reference_at"]
    assert cheapest["baseline"] == "weak>strong k=4 tau=1.0"
    assert cheapest["relative_cost"] == pytest.approx(0.5)


def test_a_baseline_above_the_route_at_its_cost_is_the_worst_margin() -> None:
    # the route joins (0.2×, 0.80) and (0.6×, 0.897) on log cost: at the cascade's 0.5× it is
    # 0.80 + 0.097 · ln(2.5) / ln(3) ≈ 0.8809, so a 0.89 cascade there leads by 0.91 point
    route = [_point("auto", 10.0, 0.70, 0.05), _point("auto", 1.0, 0.80, 0.2),
             _point("auto", 0.1, 0.897, 0.6), _point("cascade", 10.0, 0.70, 0.05)]  # fmt: skip
    s = summarise(_entry(route, cascade_acc=0.89))
    assert s["auto"]["worst_baseline"] == "weak>strong k=4 tau=1.0"
    assert s["auto"]["worst_baseline_margin"] == pytest.approx(0.0091, abs=1e-4)
    below = summarise(_entry(route, cascade_acc=0.85))
    assert below["auto"]["worst_baseline"] == "strong x3"  # the route's top is 0.897 < 0.90
    assert below["auto"]["worst_baseline_margin"] == pytest.approx(0.003)
    top = summarise(_entry([*route, _point("auto", 0.0, 0.90, 1.0)], cascade_acc=0.85))
    assert top["both"]["worst_baseline_margin"] == 0  # ties at the ends, under it between
    assert "No baseline is above the route" in summary_lines(top)[-1]
    # the cascade mode's route is one cheap point (0.70): the reference leads it by 20 points
    assert s["cascade"]["worst_baseline_margin"] == pytest.approx(0.20)
    assert "+0.91 pt (weak>strong k=4 tau=1.0)" in summary_lines(s)[-1]


def test_a_free_point_does_not_break_the_envelope() -> None:
    env = envelope([(0.0, 0.6), (1.0, 0.8), (0.5, 0.7), (2.0, 0.75)])
    assert env == [(0.0, 0.6), (0.5, 0.7), (1.0, 0.8)]  # (2.0, 0.75) is beaten by a cheaper one
    assert envelope_at(env, 0.0) == 0.6  # a free baseline meets only the free route point
    assert envelope_at(env, 0.1) == 0.6  # below the cheapest priced point: the free one
    assert envelope_at(env, 0.5) == pytest.approx(0.7)
    assert envelope_at(env, 4.0) == pytest.approx(0.8)
    assert envelope_at([(1.0, 0.8)], 0.5) == 0.0  # below a route that costs something: 0


def test_replay_route_prints_and_emits_the_summary(tmp_path: Path) -> None:
    root = toy(tmp_path / "toy", n=20)
    args = ["replay", "--route", str(root), "--perms", "1", "--lams", "0,0.3,3"]
    doc = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    summary = doc["sets"]["toy"]["summary"]
    assert set(summary) == {"tolerance", "baseline_reaches_reference_at", "auto", "cascade",
                            "both"}  # fmt: skip
    # strong is always right and weak is sure only where it is right: the route escalates the
    # split half and reaches the reference for less than the reference costs
    assert 0 < summary["auto"]["reaches_reference_at"] < 1
    words = CliRunner().invoke(app, args).stdout
    assert "Within 0.5 pt of the reference's accuracy:" in words
    assert f"route, start: best: at {summary['auto']['reaches_reference_at']:.3f}×" in words


def test_route_rows_fold_neighbouring_lambdas_that_decided_alike() -> None:
    points = [
        {**_point("auto", lam, acc, cost), "accuracy_ci95": [0.0, 1.0]}
        for lam, acc, cost in [
            (0.0, 0.9, 1.0),
            (0.01, 0.9, 1.0),
            (0.1, 0.85, 0.4),
            (1.0, 0.7, 0.05),
            (10.0, 0.7, 0.05),
            (100.0, 0.9, 1.0),
        ]
    ]
    points.append({**_point("cascade", 100.0, 0.7, 0.05), "accuracy_ci95": [0.0, 1.0]})
    rows = [(lams, p["mode"]) for lams, p in route_rows(points)]
    # only neighbours fold: the λ = 100 point equals λ = 0's but is not next to it
    assert rows == [("0–0.01", "auto"), ("0.1", "auto"), ("1–10", "auto"), ("100", "auto"),
                    ("100", "cascade")]  # fmt: skip
