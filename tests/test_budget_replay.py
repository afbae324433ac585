"""The simulated-clock budget replay: a daily budget that fits ~4 samples/query, paced by the
server's TenantPacer, ends the day within 5% of budget with no refusals (real replay data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.aggregate import get_extractor
from controller.budget.simulate import parse_budget, simulate_budget
from controller.replay import ReplayQuestion, load_replay
from tests.support import need

DATA = Path(__file__).resolve().parents[2] / "shared/data/replay/date_understanding_gpt35_40.jsonl"


@pytest.fixture(scope="module")
def questions() -> list[ReplayQuestion]:
    need(DATA.is_file(), f"replay data {DATA}")
    qs, _ = load_replay(DATA, get_extractor("last_number"))
    return qs


def test_daily_budget_ends_within_5_percent_without_refusals(
    questions: list[ReplayQuestion],
) -> None:
    result = simulate_budget(questions, samples_per_query=4.0, queries_per_day=500, days=2)
    for day in result.days:
        assert day.spent <= day.budget * (1 + 1e-9)  # a hard budget is never exceeded
    warm = result.last  # a running server: the day starts from yesterday's λ
    assert warm.refused == 0
    assert abs(warm.spent_fraction - 1.0) <= 0.05
    assert 3.0 <= warm.mean_samples <= 4.5
    # λ is the shadow price: a budget half as large must be paced at a higher price
    tight = simulate_budget(questions, samples_per_query=2.0, queries_per_day=500, days=2)
    assert tight.last.final_price > warm.final_price
    assert tight.last.mean_samples < warm.mean_samples
    assert abs(tight.last.spent_fraction - 1.0) <= 0.05


def test_parse_budget() -> None:
    assert parse_budget("4x") == (None, 4.0)
    assert parse_budget("12.5") == (12.5, 0.0)
    for bad in ("", "x", "-1", "0x", "four"):
        with pytest.raises(ValueError, match="--budget"):
            parse_budget(bad)


def test_replay_budget_cli(questions: list[ReplayQuestion]) -> None:
    runner = CliRunner()
    args = ["replay", "--data", str(DATA), "--budget", "4x", "--queries-per-day", "200"]
    out = runner.invoke(app, [*args, "--days", "1", "--json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["days"][0]["queries"] == 200 and body["days"][0]["spent"] > 0
    bad = runner.invoke(app, ["replay", "--data", str(DATA), "--budget", "lots"])
    assert bad.exit_code == 2
    assert "--budget" in bad.output and "Traceback" not in bad.output


def test_replay_budget_prints_a_row_per_day() -> None:
    args = ["replay", "--data", str(DATA), "--budget", "4x", "--queries-per-day", "100",
            "--days", "2"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "daily budget (fits 4 samples/query), 100 queries/day" in out.stdout
    assert "spent/budget" in out.stdout
    days = [line.split("│")[1].strip() for line in out.stdout.splitlines()
            if line.startswith("│")]  # fmt: skip
    assert days == ["1", "2"]
