"""Mini-T² extrapolation on our own grid: fit on every size but the largest, predict the largest.

For both approaches and both metrics (pass@k, maj@k from the same samples), fit on the grid's
smaller sizes and predict each of the largest size's cells at k = 1, 4, 16, 64; compare with the
measured unbiased estimate. Approach 1 is scored on what it models (the floored mean -log
acc_i@k) and, for the issue's comparison, as exp(-L) against the mean accuracy. Also fits every
curve on the whole grid and writes them next to the data (what `t2serve plan` reads).

Run: `python -m bench mini_t2` (~1 min; fits only, the grid must exist: `python -m models.grid`).
Data: models/mini-t2/answers.jsonl (or T2_GRID_ANSWERS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from controller.scaling.curves import Curves
from controller.scaling.data import CountTable, load_answers
from controller.scaling.fit import cell_neg_log_pass, cell_pass, fit_curves, floor_samples
from controller.scaling.laws import beta_links, beta_pass_at_k

ANSWERS = Path(os.environ.get("T2_GRID_ANSWERS", "models/mini-t2/answers.jsonl"))
EXTRAPOLATION_K = (1, 4, 16, 64)
APPROACHES = ("loss", "accuracy")
METRICS = ("pass", "maj")


def predictions(curves: Curves, table: CountTable, metric: str) -> list[dict[str, Any]]:
    """Per held-out cell and k: predicted and measured accuracy (and -log form for Approach 1)."""
    n_floor = int(curves.diagnostics.get("floor_samples", 0)) or floor_samples(table.cells)
    rows = []
    for cell in table.cells:
        ks = [k for k in EXTRAPOLATION_K if k <= float(np.min(cell.samples))]
        measured = cell_pass(cell, ks, metric)
        pred_l: np.ndarray | None = None
        meas_l: np.ndarray | None = None
        if curves.approach == "loss":
            pred_l = curves.loss(ks, params=cell.params, tokens=cell.tokens)
            meas_l = cell_neg_log_pass(cell, ks, n_floor, metric)
            pred = np.exp(-pred_l)
        else:
            pred = curves.pass_at_k(ks, params=cell.params, tokens=cell.tokens)
        for j, k in enumerate(ks):
            row = {
                "model": cell.model,
                "params": cell.params,
                "tokens": cell.tokens,
                "k": k,
                "measured": float(measured[j]),
                "predicted": float(pred[j]),
                "rel_error": abs(float(pred[j]) / max(float(measured[j]), 1e-12) - 1.0),
            }
            if pred_l is not None and meas_l is not None:
                row["measured_neglog"] = float(meas_l[j])
                row["predicted_neglog"] = float(pred_l[j])
                row["rel_error_neglog"] = abs(float(pred_l[j]) / float(meas_l[j]) - 1.0)
            rows.append(row)
    return rows


def diagnose(curves: Curves, test: CountTable, metric: str) -> dict[str, Any]:
    """Where Approach 2's error comes from: L(N, D) against the measured loss of each held-out
    cell, and the links alone (fed the measured loss) against the measured accuracy."""
    p = curves.parameters
    assert p is not None
    theta = {k: getattr(p, k) for k in ("theta0", "theta1", "theta2", "theta3", "theta4")}
    cells: list[dict[str, Any]] = []
    errors: list[float] = []
    law_errors: list[float] = []
    for cell in test.cells:
        if cell.loss is None:
            continue
        a, b = beta_links(cell.loss, **theta)
        links = beta_pass_at_k(a, b, np.asarray(EXTRAPOLATION_K, dtype=float))
        measured = cell_pass(cell, EXTRAPOLATION_K, metric)
        errors += list(np.abs(links / np.maximum(measured, 1e-12) - 1.0))
        fitted = float(curves.chinchilla_loss(params=cell.params, tokens=cell.tokens))
        cells.append({"model": cell.model, "loss": cell.loss, "fitted_loss": fitted})
        law_errors.append(abs(fitted / cell.loss - 1.0))
    return {
        "links_alone_mean_rel_error": float(np.mean(errors)) if errors else None,
        "loss_mean_rel_error": float(np.mean(law_errors)) if law_errors else None,
        "cells": cells,
    }


def subset(table: CountTable, keep: set[str]) -> CountTable:
    cells = tuple(c for c in table.cells if c.model in keep)
    return CountTable(table.path, table.sha256, sum(len(c.samples) for c in cells), None, cells)


def extrapolate(table: CountTable, *, seed: int = 0) -> dict[str, Any]:
    largest = max(c.params for c in table.cells)
    train = subset(table, {c.model for c in table.cells if c.params < largest})
    test = subset(table, {c.model for c in table.cells if c.params == largest})
    report: dict[str, Any] = {"train_cells": len(train.cells), "test_cells": len(test.cells)}
    for metric in METRICS:
        for approach in APPROACHES:
            curves = fit_curves(train, approach, seed=seed, metric=metric)
            rows = predictions(curves, test, metric)
            per_k = {
                str(k): float(np.mean([r["rel_error"] for r in rows if r["k"] == k]))
                for k in EXTRAPOLATION_K
            }
            entry: dict[str, Any] = {
                "mean_rel_error": float(np.mean([r["rel_error"] for r in rows])),
                "per_k": per_k,
                "rows": rows,
                "loss_target": curves.diagnostics.get("loss_target"),
            }
            if approach == "accuracy":
                entry["diagnosis"] = diagnose(curves, test, metric)
            if approach == "loss":
                entry["mean_rel_error_neglog"] = float(
                    np.mean([r["rel_error_neglog"] for r in rows])
                )
                entry["per_k_neglog"] = {
                    str(k): float(np.mean([r["rel_error_neglog"] for r in rows if r["k"] == k]))
                    for k in EXTRAPOLATION_K
                }
            report[f"{approach}/{metric}"] = entry
    return report


def fit_all(table: CountTable, out_dir: Path, *, seed: int = 0) -> dict[str, str]:
    """Curves on the whole grid, one file per approach and metric."""
    written = {}
    for metric in METRICS:
        for approach in APPROACHES:
            curves = fit_curves(table, approach, seed=seed, metric=metric)
            path = out_dir / f"curves-{approach}-{metric}.json"
            curves.save(path)
            written[f"{approach}/{metric}"] = str(path)
    return written


def main() -> None:
    table = load_answers(ANSWERS)
    report = extrapolate(table)
    print(
        f"-- extrapolation: fit on {report['train_cells']} cells (all sizes but the largest), "
        f"predict the largest size's {report['test_cells']} cells at k = 1, 4, 16, 64"
    )
    print(
        f"{'approach/metric':<18} {'mean':>7} "
        + " ".join(f"{'k=' + str(k):>7}" for k in EXTRAPOLATION_K)
    )
    for key in (f"{a}/{m}" for m in METRICS for a in APPROACHES):
        e = report[key]
        cols = " ".join(f"{100 * e['per_k'][str(k)]:6.1f}%" for k in EXTRAPOLATION_K)
        print(f"{key:<18} {100 * e['mean_rel_error']:6.1f}% {cols}")
        if "diagnosis" in e and e["diagnosis"]["links_alone_mean_rel_error"] is not None:
            d = e["diagnosis"]
            law, links = d["loss_mean_rel_error"], d["links_alone_mean_rel_error"]
            print(
                f"{'  diagnosis':<18} L(N,D) vs measured loss {100 * law:.0f}%;"
                f" links fed the measured loss {100 * links:.1f}%"
            )
        if "per_k_neglog" in e:
            cols = " ".join(f"{100 * e['per_k_neglog'][str(k)]:6.1f}%" for k in EXTRAPOLATION_K)
            print(f"{'  (-log form)':<18} {100 * e['mean_rel_error_neglog']:6.1f}% {cols}")
    out = ANSWERS.parent / "extrapolation.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}; curves: {fit_all(table, ANSWERS.parent)}")


if __name__ == "__main__":
    main()
