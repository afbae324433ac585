"""Test the planner the way T² does: train what it plans, next to Chinchilla's choice, and measure.

For a training budget C_train and a per-query inference budget C_inf (FLOPs per served token),
and for each metric (pass@k, maj@k) and fit (curves fitted on the whole grid):
- the planner's continuous optimum (N, D, k) and Chinchilla's (20 tokens/param, k = 1);
- the buildable choices: we can only build the grid's shapes, so each N is snapped to the
  nearest grid size (in log N) and D = C_train / 6N, k = floor(C_inf / 2N) recomputed from the
  budgets for that N; among the grid sizes, T²'s choice is the one the fit predicts best;
- both are trained at the same C_train (same recipe as the grid: constant LR, same seed), sampled
  through vLLM (64 samples × 320 held-back questions) and scored at the k the budget allows:
  measured versus predicted, T² versus Chinchilla.
The deployment form (6ND + 2NkTQ <= C_total) gets the same treatment for one Q.

Run: `python -m models.plan_check` (~10 min on 2 cores; `--json` for the report only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.scaling.curves import Curves, load_curves
from controller.scaling.data import Cell
from controller.scaling.fit import cell_pass
from controller.scaling.plan import CHINCHILLA_TOKENS_PER_PARAM, plan_deployment, plan_paper
from models import chain
from models.grid import parse_sizes
from models.grid_train import Size, TrainSettings, checkpoint_dir, count_params, train_size

GRID = Path("models/mini-t2")


def predicted(curves: Curves, n: float, d: float, k: int) -> float:
    return float(curves.pass_at_k([k], params=n, tokens=d)[0])


def snap(n: float, sizes: list[Size]) -> Size:
    return min(sizes, key=lambda s: abs(math.log(count_params(s) / n)))


def buildable_paper(
    curves: Curves, sizes: list[Size], c_train: float, c_inf: float
) -> dict[str, Any]:
    """Every grid size at the budgets: D = C_train/6N, k = floor(C_inf/2N); best and Chinchilla."""
    options: list[dict[str, Any]] = []
    for s in sizes:
        n = count_params(s)
        k = math.floor(c_inf / (2 * n) * (1 + 1e-12))
        if k < 1:
            continue
        d = c_train / (6 * n)
        options.append({"size": s.label, "params": n, "tokens": d, "k": k,
                        "predicted": predicted(curves, n, d, k)})  # fmt: skip
    best = max(options, key=lambda o: o["predicted"])
    chin = snap(math.sqrt(c_train / (6 * CHINCHILLA_TOKENS_PER_PARAM)), sizes)
    n_c = count_params(chin)
    d_c = c_train / (6 * n_c)
    chinchilla = {"size": chin.label, "params": n_c, "tokens": d_c, "k": 1,
                  "predicted": predicted(curves, n_c, d_c, 1)}  # fmt: skip
    return {"options": options, "t2": best, "chinchilla": chinchilla}


def buildable_deployment(
    curves: Curves, sizes: list[Size], c_total: float, queries: float, tpq: float
) -> dict[str, Any]:
    """Every grid size with 6ND + 2NkTQ <= C_total: the best (N, k) and Chinchilla's (k = 1)."""
    serve = 2.0 * tpq * queries
    options: list[dict[str, Any]] = []
    for s in sizes:
        n = count_params(s)
        k_max = math.floor((c_total - 6 * n * 1e5) / (serve * n))
        for k in range(1, max(k_max, 0) + 1):
            d = (c_total - serve * n * k) / (6 * n)
            options.append({"size": s.label, "params": n, "tokens": d, "k": k,
                            "predicted": predicted(curves, n, d, k)})  # fmt: skip
    best = max(options, key=lambda o: o["predicted"])
    a = 6.0 * CHINCHILLA_TOKENS_PER_PARAM
    n_c = (-serve + math.sqrt(serve * serve + 4.0 * a * c_total)) / (2.0 * a)
    chin = snap(n_c, sizes)
    n = count_params(chin)
    d = (c_total - serve * n) / (6 * n)
    chinchilla = {"size": chin.label, "params": n, "tokens": d, "k": 1,
                  "predicted": predicted(curves, n, d, 1)}  # fmt: skip
    return {"t2": best, "chinchilla": chinchilla}


def measure(
    choice: dict[str, Any], root: Path, settings: TrainSettings, cache: dict[str, Any]
) -> dict[str, Any]:
    """Train the choice to its D (a grid cell when one was trained on those tokens) and sample
    it through vLLM."""
    from models.grid_sample import CellSampler

    sizes = {s.label: s for s in parse_sizes("32x2,64x2,96x2,128x2,32x1,64x1")}
    size = sizes[choice["size"]]
    target = int(choice["tokens"])
    key = f"{size.label}-d{target}"
    for path in sorted((GRID / "cells").glob(f"{size.label}-d*.json")):
        # a grid cell trained on these tokens is this very model: same recipe and seed, and a
        # constant-LR checkpoint at D is what a run stopped at D would be (models/grid_train.py)
        cell = json.loads(path.read_text())
        if key not in cache and abs(cell["train_tokens"] / target - 1) < 0.002:
            cache[key] = {
                "info": cell["training"],
                "train_seconds": 0.0,
                "sample_seconds": cell["sample_seconds"],
                "questions": cell["questions"],
                "grid_cell": cell["model"],
            }
    if key not in cache:
        # Continue the grid's run of this size past its last checkpoint (its saved state is
        # the exact continuation), rather than train again from scratch.
        grid_tokens = json.loads((GRID / "grid.json").read_text())["spec"]["tokens"]
        t0 = time.monotonic()
        infos = train_size(size, sorted({*grid_tokens, target}), root, settings)
        info = next(i for i in infos if i["target_tokens"] == target)
        train_s = time.monotonic() - t0
        sampler = CellSampler(checkpoint_dir(root, size, target), seed=settings.seed)
        try:
            t1 = time.monotonic()
            counts = sampler.sample(chain.eval_questions(), 64)
            sample_s = time.monotonic() - t1
        finally:
            sampler.shutdown()
        cache[key] = {
            "info": info,
            "train_seconds": round(train_s, 1),
            "sample_seconds": round(sample_s, 1),
            "questions": [
                {
                    "problem": q.problem,
                    "gold": q.gold,
                    "samples": q.samples,
                    "correct": q.correct,
                    "answers": q.answers,
                }
                for q in counts
            ],
        }
    return dict(cache[key])


def score(run: dict[str, Any], k: int, metric: str) -> float:
    qs = run["questions"]
    cell = Cell(
        model="check",
        params=float(run["info"]["params"]),
        tokens=float(run["info"]["train_tokens"]),
        samples=np.array([q["samples"] for q in qs], dtype=float),
        correct=np.array([q["correct"] for q in qs], dtype=float),
        answers=tuple(q["answers"] for q in qs),
        gold=tuple(q["gold"] for q in qs),
    )
    return float(cell_pass(cell, [k], metric)[0])


def check(args: argparse.Namespace) -> dict[str, Any]:
    sizes = parse_sizes(args.sizes)
    settings = TrainSettings(seed=args.seed)
    root = Path(args.checkpoints)
    cache_path = Path(args.out).with_suffix(".runs.json")
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    report: dict[str, Any] = {
        "budgets": {
            "train_flops": args.train_flops,
            "inference_flops": args.inference_flops,
            "total_flops": args.total_flops,
            "queries": args.queries,
            "tokens_per_query": args.tokens_per_query,
        }
    }
    for metric in ("pass", "maj"):
        for approach in ("accuracy", "loss"):
            curves = load_curves(GRID / f"curves-{approach}-{metric}.json")
            small = {"n_min": 1e4, "d_min": 1e4}  # our models are 3e4-4e5 params
            cont = plan_paper(curves, args.train_flops, args.inference_flops, **small).to_dict()
            built = buildable_paper(curves, sizes, args.train_flops, args.inference_flops)
            dep_cont = plan_deployment(
                curves, args.total_flops, args.queries, args.tokens_per_query, **small
            ).to_dict()
            dep = buildable_deployment(
                curves, sizes, args.total_flops, args.queries, args.tokens_per_query
            )
            entry: dict[str, Any] = {
                "continuous": cont,
                "buildable": built,
                "deployment_continuous": dep_cont,
                "deployment": dep,
            }
            if approach == args.measure_approach:
                for form, plan in (("paper", built), ("deployment", dep)):
                    for who in ("t2", "chinchilla"):
                        choice = plan[who]
                        run = measure(choice, root, settings, cache)
                        cache_path.write_text(json.dumps(cache) + "\n")
                        choice["measured"] = score(run, choice["k"], metric)
                        choice["from_grid_cell"] = run.get("grid_cell")
                        # Chinchilla's choice is k = 1; the budget would let it draw k_allowed
                        k_allowed = max(
                            1, math.floor(args.inference_flops / (2 * choice["params"]))
                        )
                        if who == "chinchilla" and form == "paper" and k_allowed > 1:
                            choice["k_allowed"] = k_allowed
                            choice["measured_at_k_allowed"] = score(run, k_allowed, metric)
                            choice["predicted_at_k_allowed"] = predicted(
                                curves, choice["params"], choice["tokens"], k_allowed
                            )
                        choice["rel_error"] = choice["predicted"] / choice["measured"] - 1.0
                        choice["trained_tokens"] = run["info"]["train_tokens"]
                        choice["validation_loss"] = run["info"]["validation_loss"]
                        choice["train_seconds"] = run["train_seconds"]
                    chin = plan["chinchilla"]
                    plan["t2_beats_chinchilla"] = plan["t2"]["measured"] > chin["measured"]
                    plan["t2_beats_chinchilla_at_k_allowed"] = plan["t2"]["measured"] > chin.get(
                        "measured_at_k_allowed", chin["measured"]
                    )
                    plan["form"] = form
            report[f"{approach}/{metric}"] = entry
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train what the T² planner plans, and measure it.")
    p.add_argument("--sizes", default="32x2,64x2,96x2,128x2")
    # C_train = 6 N D of the grid cell h64l2-d2400000 (115,008 params, 2,404,048 tokens, 20.9
    # tokens/param): Chinchilla's choice is then a model we already trained. C_inf = 16 N_c per
    # token: Chinchilla k = 1 (8 allowed), the 31k model 29 samples. The deployment budget is
    # the same model trained and serving Q = 1e5 queries of 28 tokens at k = 1.
    p.add_argument("--train-flops", type=float, default=1658908514304.0)
    p.add_argument("--inference-flops", type=float, default=1840128.0)
    p.add_argument("--total-flops", type=float, default=2302953314304.0)
    p.add_argument("--queries", type=float, default=1e5)
    p.add_argument("--tokens-per-query", type=float, default=28.0)
    p.add_argument("--measure-approach", default="accuracy", choices=("accuracy", "loss"))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--checkpoints", default="models/mini-t2/checkpoints")
    p.add_argument("--out", default="models/mini-t2/plan_check.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = check(args)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.json or not sys.stdout.isatty():
        print(json.dumps(report))
        return
    for key, entry in report.items():
        if key == "budgets":
            continue
        for form in ("buildable", "deployment"):
            plan = entry[form]
            line = f"{key:<14} {form:<11}"
            for who in ("t2", "chinchilla"):
                c = plan[who]
                got = f" measured {c['measured']:.3f}" if "measured" in c else ""
                line += f" | {who}: {c['size']} D={c['tokens']:.3g} k={c['k']} "
                line += f"pred {c['predicted']:.3f}{got}"
            print(line)


if __name__ == "__main__":
    main()
