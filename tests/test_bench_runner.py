"""`python -m bench`, the runner BENCHMARKS.md's commands go through: options after a module's
name reach that module (`python -m bench probe --source DIR`) instead of being imported as more
module names, and a name it does not know is one line and exit 2, not a traceback."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

runner = importlib.import_module("bench.__main__")


def test_options_after_a_name_reach_that_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main(["probe", "--source", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"no checkout of MurongYue/LLM_MoT_cascade at {tmp_path}: skipped" in out


def test_an_unknown_name_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no_such_bench'" in err and "probe" in err


def test_help_lists_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "route_replay" in out and "probe" in out


def test_names_alone_run_each_without_options() -> None:
    known = runner.modules()
    assert runner.plan(["policy", "ledger"], known) == [("policy", []), ("ledger", [])]
    assert runner.plan(["probe", "--source", "d"], known) == [("probe", ["--source", "d"])]
    assert runner.plan([], known) == [(name, []) for name in known]


def test_options_for_a_module_that_takes_none_are_refused_before_it_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert runner.main(["stopping_bounds", "--help"]) == 2
    captured = capsys.readouterr()
    assert "bench.stopping_bounds takes no options" in captured.err
    assert "== bench.stopping_bounds" not in captured.out  # it did not run
