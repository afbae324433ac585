"""The Mini-T² grid (`python -m models.grid`): the smoke grid end to end through real training
and the real vLLM engine, resuming, and bad arguments refused with a one-line reason."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from models.grid import CSV_COLUMNS, main
from tests.support import need

ROOT = Path(__file__).resolve().parents[1]


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0), capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sizes", ""], "size list is empty"),
        (["--sizes", " , "], "size list is empty"),
        (["--sizes", "48x2"], "multiple of 32"),
        (["--sizes", "big"], "HIDDENxLAYERS"),
        (["--tokens", "500"], "below one batch"),
        (["--tokens", "2e4,1e3", "--batch", "16"], "below one batch"),
        (["--tokens", ""], "token list is empty"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_bad_grid_arguments_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, err = _run_main(["--smoke", "--out", str(tmp_path / "g"), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "g").exists()  # nothing written for a refused grid


def test_a_folder_holding_a_different_grid_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g"
    out.mkdir()
    spec = {"task": "chain", "sizes": ["h32l1"], "tokens": [20000], "samples": 8,
            "questions": 16, "seed": 1, "batch": 16, "lr": 0.003}  # fmt: skip
    (out / "grid.json").write_text(json.dumps({"spec": spec, "wall_seconds": 0, "runs": []}))
    code, err = _run_main(["--smoke", "--out", str(out)], capsys)
    assert code == 2
    assert "holds a different grid" in err and "sizes" in err and "\n" not in err, err
    (out / "grid.json").unlink()
    (out / "stray.txt").write_text("not a grid")
    code, err = _run_main(["--smoke", "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err, err


def _grid(out: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "models.grid", "--smoke", "--out", str(out), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.engine
def test_smoke_grid_end_to_end(tmp_path: Path) -> None:
    need(importlib.util.find_spec("vllm") is not None, "vllm")
    out = tmp_path / "smoke"
    summary = _grid(out)
    assert summary["cells"] == 4
    with (out / "grid.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4 * 16 and {r["samples"] for r in rows} == {"8"}
    losses: dict[tuple[str, int], float] = {}
    for r in rows:
        assert 0 <= int(r["correct"]) <= 8
        size = r["model"].split("-d")[0]
        losses[(size, int(r["tokens"]))] = float(r["loss"])
    for size in ("h32l1", "h32l2"):
        (d1, l1), (d2, l2) = sorted((d, v) for (s, d), v in losses.items() if s == size)
        assert d2 > d1 >= 20_000 and l2 < l1, (size, losses)  # more tokens, lower held-out loss
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 64 and all(sum(a["answers"].values()) == 8 for a in answers)

    again = _grid(out)  # resumable: every cell is done, nothing is retrained or resampled
    assert again["cells"] == 4
    assert json.loads((out / "grid.json").read_text())["runs"][-1]["cells_done"] == 0

    runner = CliRunner()
    for data, metric in ((out / "grid.csv", "pass"), (out / "answers.jsonl", "maj")):
        result = runner.invoke(
            app,
            ["fit", "--data", str(data), "--approach", "loss", "--metric", metric,
             "--out", str(tmp_path / f"{metric}.json"), "--starts", "8", "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["diagnostics"]["metric"] == metric
