"""Approach 2 on real losses: a `loss` column is used for L(N, D) and the links are recovered;
maj@k targets come from answer counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from controller.scaling.data import load_answers, load_counts
from controller.scaling.estimators import maj_at_k
from controller.scaling.fit import fit_accuracy, question_rates
from controller.scaling.laws import beta_links, beta_pass_at_k, chinchilla_loss

TRUE_LAW = {"E": 0.05, "A": 300.0, "alpha": 0.55, "B": 900.0, "beta": 0.6}
TRUE_LINKS = {"theta0": 0.6, "theta1": 4.0, "theta2": 0.95, "theta3": 1.2, "theta4": -0.8}
QUESTIONS = 400
SAMPLES = 256


def _write_grid(path: Path, *, with_loss: bool, seed: int = 0) -> None:
    """A 4 × 6 grid whose per-question rates come from the known links at the known L(N, D)."""
    rng = np.random.default_rng(seed)
    lines = ["model,params,tokens,problem,samples,correct" + (",loss" if with_loss else "")]
    for n in (3e4, 6e4, 1.2e5, 2.5e5):
        for d in (1.5e5, 3e5, 6e5, 1.2e6, 2.4e6, 4.8e6):
            lval = float(chinchilla_loss(n, d, **TRUE_LAW))
            a, b = beta_links(lval, **TRUE_LINKS)
            rates = rng.beta(float(a), float(b), QUESTIONS)
            correct = rng.binomial(SAMPLES, rates)
            for q, c in enumerate(correct):
                row = f"m{n:g}-{d:g},{n:g},{d:g},q{q},{SAMPLES},{c}"
                lines.append(row + (f",{lval:.6f}" if with_loss else ""))
    path.write_text("\n".join(lines) + "\n")


def test_accuracy_fit_recovers_known_law_and_links_from_the_loss_column(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    _write_grid(path, with_loss=True)
    table = load_counts(path)
    assert table.has_loss
    curves = fit_accuracy(table, n_starts=32, seed=0)
    p = curves.parameters
    assert p is not None
    got = p.model_dump()
    for name, value in TRUE_LAW.items():
        assert got[name] == pytest.approx(value, rel=0.05), name  # exact losses in
    for name in ("theta0", "theta1", "theta2"):  # where the mean accuracy is set
        assert got[name] == pytest.approx(TRUE_LINKS[name], rel=0.15), name
    # nu (theta3, theta4: the spread of difficulty) is only weakly identified by mean pass@k over
    # 400 questions; what must hold is the curve it implies, at every cell and k
    for n in (3e4, 2.5e5):
        for d in (1.5e5, 4.8e6):
            a, b = beta_links(float(chinchilla_loss(n, d, **TRUE_LAW)), **TRUE_LINKS)
            true = beta_pass_at_k(a, b, np.array([1.0, 16.0, 256.0]))
            pred = curves.pass_at_k([1, 16, 256], params=n, tokens=d)
            assert np.allclose(pred, true, rtol=0.2), (n, d, pred, true)
    assert "loss column" in curves.diagnostics["loss_target"]
    assert curves.diagnostics["chinchilla"]["cells"] == 24


def test_without_a_loss_column_the_stand_in_is_used_and_named(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    _write_grid(path, with_loss=False)
    table = load_counts(path)
    assert not table.has_loss
    curves = fit_accuracy(table, n_starts=8, seed=0)
    assert curves.diagnostics["loss_target"].startswith("stand-in")
    assert curves.parameters is not None
    # the stand-in's L is -log pass@1, nowhere near the true per-token loss scale
    assert curves.parameters.model_dump()["A"] != pytest.approx(TRUE_LAW["A"], rel=0.05)


def test_loss_column_must_agree_within_a_model(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "model,params,tokens,problem,samples,correct,loss\nm,1,1,a,4,1,0.5\nm,1,1,b,4,1,0.6\n"
    )
    result = CliRunner().invoke(
        app, ["fit", "--data", str(path), "--approach", "beta", "--out", str(tmp_path / "c.json")]
    )
    assert result.exit_code == 2
    assert "row 3" in result.stderr and "loss" in result.stderr


def test_maj_rates_come_from_answer_counts(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    rows = [
        {"model": "m", "params": 1e4, "tokens": 1e5, "loss": 0.5, "problem": "a", "gold": "7",
         "answers": {"7": 5, "8": 3}},
        {"model": "m", "params": 1e4, "tokens": 1e5, "loss": 0.5, "problem": "b", "gold": "3",
         "answers": {"3": 2, "4": 4, "": 2}},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = load_answers(path)
    cell = table.cells[0]
    assert table.has_answers and table.has_loss and cell.loss == 0.5
    assert list(cell.correct) == [5, 2] and list(cell.samples) == [8, 8]
    maj = question_rates(cell, [1, 3, 8], "maj")
    assert maj[0, 2] == 1.0 and maj[1, 2] == 0.0  # all 8 votes: the plurality decides
    assert maj[1, 1] == pytest.approx(maj_at_k({"3": 2, "4": 4, "": 2}, "3", 3))
    passk = question_rates(cell, [1, 3, 8], "pass")
    assert passk[1, 2] == 1.0 and maj[0, 0] == pytest.approx(passk[0, 0])  # maj@1 = pass@1


def test_metric_maj_needs_answer_counts(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    _write_grid(path, with_loss=True)
    result = CliRunner().invoke(
        app,
        ["fit", "--data", str(path), "--approach", "loss", "--metric", "maj",
         "--out", str(tmp_path / "c.json")],
    )  # fmt: skip
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "answer counts" in message
