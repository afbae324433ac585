"""Replay as a stream: the policy learns as questions finish, and the learning curve shows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cli.app import app
from controller.replay import ReplayQuestion, ReplaySample, replay


def decisive(n: int, seed: int = 0, samples: int = 16) -> list[ReplayQuestion]:
    """Questions whose leader holds nearly every vote: a rule that learns this stops sooner."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        answers = ["gold" if rng.random() < 0.97 else f"w{rng.integers(3)}" for _ in range(samples)]
        out.append(
            ReplayQuestion(
                f"q{i}", "gold", tuple(ReplaySample(a, None, None) for a in answers), i + 1
            )
        )
    return out


def test_the_online_rule_gets_cheaper_as_the_stream_goes_on() -> None:
    result = replay(decisive(400), "online", perms=2)
    curve = result.learning_curve()
    assert set(curve) == {50, 100, 400}
    # AC (C = 0.95) for the first 20 questions needs 4-0; once learned, 2-0 or 3-0 suffices
    assert curve[400] < curve[50] - 0.3
    ac = replay(decisive(400), "adaptive_consistency", perms=2).learning_curve()
    assert abs(ac[50] - ac[400]) < 0.3  # a rule that does not learn has a flat curve
    assert curve[400] < ac[400]


def test_a_shorter_file_reports_the_prefixes_it_has() -> None:
    assert set(replay(decisive(120), "online", perms=1).learning_curve()) == {50, 100}


def test_cli_json_carries_the_learning_curve(tmp_path: Path) -> None:
    data = tmp_path / "stream.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"id": q.id, "gold": q.gold, "samples": [{"answer": s.answer} for s in q.samples]}
            )
            + "\n"
            for q in decisive(110)
        )
    )
    result = CliRunner().invoke(
        app, ["replay", "--data", str(data), "--policy", "online:0.005", "--perms", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["policy"] == "online:0.005"
    assert set(obj["learning_curve"]) == {"50", "100"}
