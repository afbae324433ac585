"""Leave-one-file-out: a file's own data never reaches the choice it is scored with."""

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.policy import make_policy
from controller.policy.t2 import DEFAULT_LAM, T2
from controller.replay import ReplayQuestion, ReplaySample, replay
from controller.replay.loo import FAMILIES as GRIDS
from controller.replay.loo import (
    MAJORITY,
    Family,
    Grid,
    choose,
    leave_one_out,
    paired,
)

MARGIN = Family("margin", ("margin:1", "margin:2", "margin:3", "margin:5"), "margin:3")
FAMILIES = (MARGIN, Family("esc", ("esc:2", "esc:4"), "esc:2"))


def contested(n: int, share: float, seed: int, samples: int = 16) -> list[ReplayQuestion]:
    """Questions where gold wins a `share` of votes and a few wrong answers split the rest."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        answers = [
            "gold" if rng.random() < share else f"w{rng.integers(2)}" for _ in range(samples)
        ]
        out.append(
            ReplayQuestion(
                f"q{i}", "gold", tuple(ReplaySample(a, None, 10.0) for a in answers), i + 1
            )
        )
    return out


def constant(n: int, samples: int = 16) -> list[ReplayQuestion]:
    """Every sample of every question is the gold answer: any setting is perfect here."""
    return [
        ReplayQuestion(
            f"c{i}", "gold", tuple(ReplaySample("gold", None, 10.0) for _ in range(samples)), i + 1
        )
        for i in range(n)
    ]


def test_choose_takes_the_cheapest_setting_feasible_on_every_training_file() -> None:
    files = {"a": contested(60, 0.55, 1), "b": contested(60, 0.6, 2)}
    grids = {
        k: {
            s: replay(qs, s, perms=3)
            for s in (*MARGIN.settings, MAJORITY, "adaptive_consistency:0.95")
        }
        for k, qs in files.items()
    }
    picked = choose(MARGIN, grids, tolerance=0.002)
    for g in grids.values():
        assert g[picked].accuracy >= g[MAJORITY].accuracy - 0.002
    cheaper = [
        s
        for s in MARGIN.settings
        if np.mean([g[s].mean_samples for g in grids.values()])
        < np.mean([g[picked].mean_samples for g in grids.values()])
    ]
    for s in cheaper:  # every cheaper setting fails somewhere
        assert min(g[s].accuracy - g[MAJORITY].accuracy for g in grids.values()) < -0.002
    # on constant answers alone the cheapest setting is feasible, and it is chosen
    flat = {"c": {s: replay(constant(20), s, perms=2) for s in grids["a"]}}
    assert choose(MARGIN, flat, tolerance=0.002) == "margin:1"


def test_a_files_own_data_never_reaches_its_own_tuning() -> None:
    hard = {"a": contested(50, 0.55, 1), "b": contested(50, 0.6, 2)}
    seen: list[set[str]] = []

    def spy(family: Family, train: Mapping[str, Grid], tolerance: float) -> str:
        seen.append(set(train))
        return choose(family, train, tolerance)

    base = leave_one_out(
        {**hard, "c": contested(50, 0.58, 3)},
        families=FAMILIES,
        perms=2,
        tune_perms=2,
        budgets=(),
        chooser=spy,
    )
    swapped = leave_one_out(
        {**hard, "c": constant(50)},
        families=FAMILIES,
        perms=2,
        tune_perms=2,
        budgets=(),
        chooser=spy,
    )
    # each fold's chooser saw exactly the other files
    assert seen.count({"b", "c"}) == seen.count({"a", "c"}) == seen.count({"a", "b"}) == 4
    # replacing c by constant answers cannot move the settings c is scored with...
    assert swapped.files["c"].chosen == base.files["c"].chosen
    # ...but it is training data for a and b: there the cheapest margin becomes feasible on it
    assert swapped.files["c"].loo["margin"].result.accuracy == 1.0
    assert swapped.grids["c"]["margin:1"].accuracy == 1.0
    assert base.files["c"].loo["margin"].result.policy == base.files["c"].chosen["margin"]


def test_scores_are_paired_over_the_same_orders() -> None:
    qs = contested(80, 0.55, 4)
    a, b = replay(qs, "margin:1", perms=3), replay(qs, MAJORITY, perms=3)
    p = paired(a, b)
    assert p.diff == pytest.approx(a.accuracy - b.accuracy)
    assert p.ci95[0] <= p.diff <= p.ci95[1]
    assert paired(b, b).ci95 == (0.0, 0.0)  # the same run: no difference, no noise
    with pytest.raises(ValueError):
        paired(a, replay(qs, MAJORITY, perms=2))


def test_paced_runs_hold_their_budget() -> None:
    files = {"a": contested(60, 0.55, 1), "b": contested(60, 0.6, 2)}
    report = leave_one_out(files, families=FAMILIES, perms=2, tune_perms=1, budgets=(3.0,))
    for f in report.files.values():
        assert set(f.paced[3.0]) == {"margin", "margin@default", "esc", "esc@default"}
        assert f.paced[3.0]["margin"].mean_samples == pytest.approx(3.0, rel=0.15)


def write(path: Path, questions: list[ReplayQuestion]) -> None:
    path.write_text(
        "".join(
            json.dumps(
                {"id": q.id, "gold": q.gold, "samples": [{"answer": s.answer} for s in q.samples]}
            )
            + "\n"
            for q in questions
        )
    )


def test_cli_loo_prints_per_file_and_pooled_json_and_draws_the_frontiers(tmp_path: Path) -> None:
    write(tmp_path / "one.jsonl", contested(25, 0.55, 1))
    write(tmp_path / "two.jsonl", contested(25, 0.65, 2))
    with (tmp_path / "two.jsonl").open("a") as f:  # a failed call: left out, named
        f.write(json.dumps({"id": "empty", "gold": "a", "samples": []}) + "\n")
    png = tmp_path / "frontier.png"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--data",
            str(tmp_path),
            "--loo",
            "--perms",
            "2",
            "--tune-perms",
            "1",
            "--budgets",
            "4",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(obj["files"]) == {"one", "two"}
    assert obj["skipped_lines"] == {"one": [], "two": [26]}
    t2 = obj["files"]["one"]["loo"]["t2"]
    for key in ("accuracy", "accuracy_ci95", "mean_samples", "samples_vs_ac", "vs_majority"):
        assert key in t2
    assert obj["files"]["one"]["chosen"]["margin"].startswith("margin:")
    assert "4" in obj["files"]["two"]["paced"]
    rival = obj["files"]["two"]["paced_t2_vs_best_baseline"]["4"]["rival"]
    assert not rival.startswith("t2") and rival in obj["files"]["two"]["paced"]["4"]
    assert obj["chosen_on_all_files"]["t2"].startswith("t2:")
    assert set(obj["pooled"]["loo"]) >= {"t2", "margin", "adaptive_consistency", "esc"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_loo_rejects_a_single_file(tmp_path: Path) -> None:
    write(tmp_path / "one.jsonl", contested(5, 0.55, 1))
    result = CliRunner().invoke(app, ["replay", "--data", str(tmp_path / "one.jsonl"), "--loo"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["replay", "--data", str(tmp_path), "--loo"])
    assert result.exit_code == 2 and "at least two" in result.stderr


def test_t2s_shipped_default_is_a_point_of_the_grid_loo_chooses_from() -> None:
    t2 = make_policy("t2")
    assert isinstance(t2, T2) and t2.lam == DEFAULT_LAM
    grid = next(f for f in GRIDS if f.name == "t2")
    assert any(make_policy(s).spec == t2.spec for s in grid.settings)


def test_loo_reads_recorded_answers_through_a_named_extractor(tmp_path: Path) -> None:
    """`--loo --extractor date` normalises every file's recorded answers, as a single file's
    replay does (cli.replay_loo.load_folder)."""
    from cli.replay_loo import load_folder
    from controller.aggregate import get_extractor

    line = {"id": "d", "gold": "01/05/2021", "samples": [{"answer": "Today is 1/5/2021."}]}
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(line) + "\n")
    named, _ = load_folder(tmp_path, get_extractor("date"), skip_empty=False, named=True)
    plain, _ = load_folder(tmp_path, get_extractor("date"), skip_empty=False)
    assert named["a"][0].samples[0].answer == "01/05/2021"
    assert plain["a"][0].samples[0].answer == "today is 1/5/2021"


def test_cli_loo_prints_a_table_per_file_and_the_pooled_lines(tmp_path: Path) -> None:
    write(tmp_path / "one.jsonl", contested(20, 0.55, 1))
    write(tmp_path / "two.jsonl", contested(20, 0.65, 2))
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--data",
            str(tmp_path),
            "--loo",
            "--perms",
            "1",
            "--tune-perms",
            "1",
            "--budgets",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "one (20 q × 1 orders; maj@all" in out and "two (20 q × 1 orders" in out
    assert "setting (chosen without this file)" in out and "--avg-samples 4:" in out
    assert "pooled over all files (held-out settings):" in out
    assert out.count("× AC samples") == len(GRIDS)  # one pooled line per family
