"""Scaling-law acceptance on the Pythia GSM8K counts: extrapolation, forecasting, speed, planner.

Run: `python -m bench scaling` (or `make bench`). Prints the figures recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from controller.scaling.beta import fit_beta_binomial
from controller.scaling.curves import AccuracyParams, Curves
from controller.scaling.data import CountTable, load_counts
from controller.scaling.fit import (
    _COEF,
    _EXPONENT,
    _G_COEF,
    _LOG_E,
    LOSS_STARTS,
    cell_neg_log_pass,
    cell_pass,
    fit_accuracy,
    fit_loss,
    floor_samples,
    loss_points,
    lse_objective,
    task_loss,
    usable_k,
)
from controller.scaling.laws import beta_links, beta_pass_at_k
from controller.scaling.optimize import multistart_minimize
from controller.scaling.plan import plan_paper

DATA = os.environ.get("T2_PYTHIA_CSV", "../shared/data/passk/pythia_gsm8k.csv")
EXTRAPOLATION_K = (1, 10, 100, 1000)
FORECAST_K = (1000, 10000)
FORECAST_SAMPLES = 100


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def extrapolation(full: CountTable, train: CountTable) -> dict[str, Curves]:
    print(
        f"-- 1. extrapolation: fit on params<=3e9 ({len(train.cells)} checkpoints), "
        "predict 6.9B and 12B at k=1,10,100,1000 (k <= samples)"
    )
    loss = fit_loss(train)
    acc = fit_accuracy(train)
    n_floor = int(loss.diagnostics["floor_samples"])
    held = [c for c in full.cells if c.params > 3e9]
    p = acc.parameters
    assert isinstance(p, AccuracyParams)
    links = {f"theta{i}": getattr(p, f"theta{i}") for i in range(5)}
    rows: dict[str, list[tuple[float, float]]] = {"loss": [], "accuracy": [], "links only": []}
    for cell in held:
        ks = usable_k(cell, EXTRAPOLATION_K)
        got_l = loss.loss(ks, params=cell.params, tokens=cell.tokens)
        want_l = cell_neg_log_pass(cell, ks, n_floor)
        got_a = acc.pass_at_k(ks, params=cell.params, tokens=cell.tokens)
        a, b = beta_links(task_loss(cell), **links)  # the links fed the measured task loss
        got_links = beta_pass_at_k(a, b, np.asarray(ks, dtype=float))
        want_a = cell_pass(cell, ks)
        for gl, wl, ga, gk, wa in zip(got_l, want_l, got_a, got_links, want_a, strict=True):
            rows["loss"].append((abs(gl - wl) / wl, cell.tokens))
            if wa > 0:
                rows["accuracy"].append((abs(ga - wa) / wa, cell.tokens))
                rows["links only"].append((abs(gk - wa) / wa, cell.tokens))
    for name, target in (
        ("loss", "-log pass@k"),
        ("accuracy", "pass@k"),
        ("links only", "pass@k"),
    ):
        errs = rows[name]
        cut = [f"{100 * _mean([e for e, d in errs if d >= lo]):.1f}%" for lo in (2e9, 2e10)]
        print(
            f"   {name:10s} mean |rel err| in {target}: {100 * _mean([e for e, _ in errs]):.1f}% "
            f"({len(errs)} points); >=2B tokens {cut[0]}; >=20B tokens {cut[1]}"
        )
    print(
        f"   loss fit: {loss.diagnostics['starts']} starts, train rmse(log) "
        f"{loss.diagnostics['rmse_log']:.3f}; accuracy fit: train rmse(log) "
        f"{acc.diagnostics['rmse_log']:.3f}, {len(acc.diagnostics['excluded_cells'])} "
        f"checkpoints with < {acc.diagnostics['min_correct']} correct samples left out"
    )
    return {"loss": loss, "accuracy": acc}


def forecasting(full: CountTable, seed: int = 0) -> None:
    print(
        f"-- 2. forecasting: Beta fitted to {FORECAST_SAMPLES} hypergeometrically subsampled "
        "samples per question, pass@1000 and pass@10000 vs the full-count estimate"
    )
    rng = np.random.default_rng(seed)
    errs: dict[int, list[tuple[float, int]]] = {k: [] for k in FORECAST_K}
    for cell in full.cells:
        ks = [k for k in usable_k(cell, FORECAST_K) if k > FORECAST_SAMPLES]
        if not ks or np.min(cell.samples) < FORECAST_SAMPLES:
            continue
        n = cell.samples.astype(np.int64)
        c = cell.correct.astype(np.int64)
        sub = rng.hypergeometric(c, n - c, FORECAST_SAMPLES)
        fit = fit_beta_binomial(np.full(sub.size, FORECAST_SAMPLES), sub, seed=seed)
        measured = cell_pass(cell, ks)
        predicted = np.atleast_1d(fit.pass_at_k(np.asarray(ks, dtype=float)))
        for k, want, got in zip(ks, measured, predicted, strict=True):
            if want > 0:
                errs[k].append((abs(got - want) / want, int(sub.sum())))
    for k, values in errs.items():
        arr = np.array([e for e, _ in values])
        rich = np.array([e for e, hits in values if hits >= 20])
        if arr.size:
            print(
                f"   k={k:5d}: {arr.size} checkpoints, mean |rel err| {100 * arr.mean():.1f}% "
                f"(median {100 * np.median(arr):.1f}%); the {rich.size} whose 100-sample subsample "
                f"has >= 20 correct: mean {100 * _mean(list(rich)):.1f}%"
            )


def speed(full: CountTable) -> None:
    print("-- 3. speed: Approach 1 on the whole file")
    t0, cpu0 = time.perf_counter(), time.process_time()
    curves = fit_loss(full)
    production = time.perf_counter() - t0
    production_cpu = time.process_time() - cpu0
    pts = loss_points(full.cells, floor_samples(full.cells))
    log_vars = np.column_stack([np.log(pts.params), np.log(pts.tokens), np.log(pts.k)])
    objective = lse_objective(log_vars, np.log(pts.y))
    bounds = [_LOG_E, _COEF, _EXPONENT, _COEF, _EXPONENT, _G_COEF, _EXPONENT]

    def value_only(x: np.ndarray) -> float:
        return objective(x)[0]

    probe = 16  # baseline starts actually run; scaled to the production start count
    t0 = time.perf_counter()
    numeric = multistart_minimize(value_only, bounds, n_starts=probe, seed=0, jac=False)
    numeric_s = (time.perf_counter() - t0) * LOSS_STARTS / probe
    t0 = time.perf_counter()
    single = multistart_minimize(objective, bounds, n_starts=1, seed=0)
    single_s = time.perf_counter() - t0
    print(
        f"   production ({curves.diagnostics['starts']} starts, analytic gradient, screen + "
        f"polish): {production:.2f} s wall, {production_cpu:.2f} s CPU, "
        f"objective {curves.diagnostics['objective']:.5f}"
    )
    print(
        f"   baseline scipy numeric gradient, every start to convergence: {numeric_s:.1f} s "
        f"(measured on {probe} starts, x{LOSS_STARTS // probe}); "
        f"speed-up x{numeric_s / production:.1f}; its best of {probe}: {numeric.fun:.5f}"
    )
    print(
        f"   one analytic start to convergence: {single_s:.3f} s (objective {single.fun:.5f}); "
        f"production = {production / single_s:.0f} single starts"
    )
    print(f"   load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def planner(curves: dict[str, Curves]) -> None:
    print("-- 4. planner at C_train=1e21, C_inf=1e11 (fits on the whole file)")
    for name, c in curves.items():
        plan = plan_paper(c, 1e21, 1e11)
        t2, chin = plan.t2, plan.chinchilla
        print(
            f"   {name:9s} T2: N={t2.params:.3g} D={t2.tokens:.3g} k={t2.k} "
            f"tokens/param={t2.tokens_per_param:.0f} pass@k={t2.pass_at_k:.4f} | Chinchilla: "
            f"N={chin.params:.3g} tokens/param=20 k=1 pass@1={chin.pass_at_k:.5f}"
        )


def main() -> None:
    full = load_counts(DATA)
    train = load_counts(DATA, where="params<=3e9")
    extrapolation(full, train)
    forecasting(full)
    speed(full)
    whole = {"loss": fit_loss(full), "accuracy": fit_accuracy(full)}
    planner(whole)


if __name__ == "__main__":
    main()
