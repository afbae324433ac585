"""`t2serve calibrate --from-replay`: the served curves live calibration writes, from logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.scaling.served import load_served

runner = CliRunner()


def write_replay(path: Path) -> Path:
    """Four date questions, three samples each: a sentence, an unpadded date, a null (whose
    text holds the gold date: a null answer abstains all the same)."""
    rows = []
    for i in range(4):
        gold = f"0{i + 1}/01/2021"
        samples = [
            {"text": f"A: Today is {i + 1}/1/2021.", "answer": f"Today is {i + 1}/1/2021."},
            {"text": f"A: {gold}", "answer": gold if i % 2 == 0 else "12/31/1999"},
            {"text": f"A: perhaps {gold}, but the run failed", "answer": None},  # abstains
        ]
        rows.append({"id": f"d-{i}", "question": f"q{i}", "gold": gold, "samples": samples})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_from_replay_writes_the_served_curves_without_sampling(tmp_path: Path) -> None:
    data = write_replay(tmp_path / "log.jsonl")
    out = tmp_path / "out"
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", "m",
                                 "--params", "13e9", "--extractor", "date", "--out", str(out),
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["files"]) == {"replay.jsonl", "passk.csv", "measured.json", "curves.json"}
    curves = load_served(out / "curves.json", "m")
    # per question: the sentence is right (the date extractor), the second sample on even
    # questions, the null abstains → 1 sample of 3 right on odd questions, 2 on even
    assert curves.curve[0] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert curves.params == 13e9
    assert report["single_sample_accuracy"] == pytest.approx(0.5, abs=1e-4)


def test_from_replay_without_the_extractor_keeps_recorded_answers(tmp_path: Path) -> None:
    data = write_replay(tmp_path / "log.jsonl")
    out = tmp_path / "out"
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", "m",
                                 "--params", "1", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_served(out / "curves.json", "m").curve[0] == pytest.approx((1 / 3 + 0) / 2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "--params"),
        (["--params", "1", "--extractor", "nope"], "unknown extractor"),
        # sampling options have nothing to act on: they were read by nobody
        (["--params", "1", "--samples", "8"], "--samples does not apply with --from-replay"),
        (["--params", "1", "--data", "q.jsonl"], "--data does not apply with --from-replay"),
        (["--params", "1", "--temperature", "0.5"], "--temperature does not apply"),
    ],
)
def test_from_replay_bad_input_exits_2(tmp_path: Path, args: list[str], says: str) -> None:
    data = write_replay(tmp_path / "log.jsonl")
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", "m",
                                 "--out", str(tmp_path / "o"), *args])  # fmt: skip
    assert result.exit_code == 2
    assert says in result.stderr


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"id": "x", "gold": "1", "samples": [{"text": "1"}]', "not valid JSON"),
        ('{"id": "x", "samples": [{"text": "1", "answer": "1"}]}', "needs a `correct` flag"),
        ('{"id": "x", "samples": [{"text": "1", "correct": true}]}', "gold: missing"),
    ],
)
def test_from_replay_reads_lines_as_replay_does_and_names_the_line(
    tmp_path: Path, line: str, says: str
) -> None:
    """The one reader of recorded samples (controller.replay.data) with calibration's own
    check (gold); no hint of `replay`'s --skip-empty, which this command does not have."""
    data = write_replay(tmp_path / "log.jsonl")
    data.write_text(data.read_text() + line + "\n")
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", "m",
                                 "--params", "1", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2
    assert f"{data}:5:" in result.stderr and says in result.stderr
    assert "--skip-empty" not in result.stderr


def test_from_replay_leaves_out_the_questions_a_failed_call_cut_short(tmp_path: Path) -> None:
    """Four questions of three samples, one of one and one of none: K stays 3 (not 0, as
    cutting every question to the fewest would make it) and the two short ones are named."""
    data = write_replay(tmp_path / "log.jsonl")
    short = {"id": "short", "gold": "1", "samples": [{"text": "1", "answer": "1"}]}
    empty = {"id": "empty", "gold": "1", "samples": []}
    data.write_text(data.read_text() + json.dumps(short) + "\n" + json.dumps(empty) + "\n")
    out = str(tmp_path / "o")
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", "m",
                                 "--params", "1", "--out", out, "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples_per_question"] == 3 and report["questions"] == 4
    assert report["left_out"] == ["short", "empty"]


def test_an_empty_model_id_and_the_replay_only_params_are_refused(tmp_path: Path) -> None:
    data = write_replay(tmp_path / "log.jsonl")
    result = runner.invoke(app, ["calibrate", "--from-replay", str(data), "--model", " ",
                                 "--params", "1", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "--model: give a model id" in result.stderr
    result = runner.invoke(app, ["calibrate", "--config", "configs/default.yaml", "--data",
                                 str(data), "--model", "m", "--params", "1",
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "--params does not apply with --data" in result.stderr
    assert not (tmp_path / "o").exists()


def _lines(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_samples_are_scored_right_as_replay_scores_them(tmp_path: Path) -> None:
    """Under `--extractor choice` ("(A)" read as "A") every sample was written wrong: each
    answer was normalised again ("a") before it met its gold ("A")."""
    log = _lines(tmp_path / "mc.jsonl", [
        {"id": f"q{i}", "question": "?", "gold": "(A)",
         "samples": [{"text": "so (A)", "answer": "(A)"}] * 3 + [{"text": "(B)", "answer": "(B)"}]}
        for i in range(6)])  # fmt: skip
    result = runner.invoke(app, ["calibrate", "--from-replay", str(log), "--model", "m",
                                 "--params", "1", "--out", str(tmp_path / "o"), "--extractor",
                                 "choice", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["single_sample_accuracy"] == pytest.approx(0.75)


def test_a_log_where_most_calls_failed_still_calibrates(tmp_path: Path) -> None:
    """Four of 20 questions hold 10 samples, the rest none (failed calls): "no question has
    samples", because the width was taken over the empty ones too."""
    log = _lines(tmp_path / "sparse.jsonl", [
        {"id": f"q{i}", "question": "?", "gold": "1",
         "samples": [{"text": "1", "answer": "1"}] * 10 if i % 5 == 0 else []}
        for i in range(20)])  # fmt: skip
    out = tmp_path / "o"
    result = runner.invoke(app, ["calibrate", "--from-replay", str(log), "--model", "m",
                                 "--params", "1", "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples_per_question"] == 10


def test_a_log_scored_by_correct_flags_says_calibration_needs_gold(tmp_path: Path) -> None:
    log = _lines(tmp_path / "flags.jsonl", [
        {"id": "q0", "question": "?", "samples": [{"text": "x", "correct": True}]}])  # fmt: skip
    result = runner.invoke(app, ["calibrate", "--from-replay", str(log), "--model", "m",
                                 "--params", "1", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2
    assert "calibration needs each question's gold answer" in result.stderr
