"""The Mini-T² figures (PNG, docs/): validation loss against D, pass@k against k with both fitted
curves, and the iso-budget comparison of the planner against Chinchilla.

Run: `python -m models.grid_plots` after `python -m models.grid`, `python -m bench mini_t2`
(writes the curves) and `python -m models.plan_check` (writes plan_check.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from controller.scaling.curves import load_curves
from controller.scaling.data import load_answers
from controller.scaling.fit import cell_pass

GRID = Path("models/mini-t2")
DOCS = Path("docs")
KS = (1, 2, 4, 8, 16, 32, 64)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_vs_tokens(out: Path) -> None:
    plt = _plt()
    table = load_answers(GRID / "answers.jsonl")
    law = load_curves(GRID / "curves-accuracy-pass.json")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    sizes = sorted({c.params for c in table.cells})
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(sizes):
        cells = sorted((c for c in table.cells if c.params == n), key=lambda c: c.tokens)
        d = np.array([c.tokens for c in cells])
        colour = cmap(i / max(len(sizes) - 1, 1))
        ax.scatter(d, [c.loss for c in cells], color=colour, s=18, label=f"N = {n:,.0f}")
        dense = np.geomspace(d.min(), d.max(), 60)
        ax.plot(dense, law.chinchilla_loss(params=n, tokens=dense), color=colour, lw=1.1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("validation loss (nats / answer token)")
    ax.set_title("Mini-T² grid: held-out loss (dots), Chinchilla L(N, D) fit (lines)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def passk_cells(out: Path, metric: str = "pass") -> None:
    plt = _plt()
    table = load_answers(GRID / "answers.jsonl")
    acc = load_curves(GRID / f"curves-accuracy-{metric}.json")
    loss = load_curves(GRID / f"curves-loss-{metric}.json")
    sizes = sorted({c.params for c in table.cells})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.0 * len(sizes), 3.6), squeeze=False)
    tokens = sorted({c.tokens for c in table.cells})
    cmap = plt.get_cmap("plasma")
    for ax, n in zip(axes.flat, sizes, strict=True):
        for cell in sorted((c for c in table.cells if c.params == n), key=lambda c: c.tokens):
            colour = cmap(tokens.index(cell.tokens) / max(len(tokens) - 1, 1) * 0.85)
            ax.scatter(KS, cell_pass(cell, KS, metric), color=colour, s=12)
            dense = np.geomspace(1, 64, 40)
            ax.plot(dense, acc.pass_at_k(dense, params=n, tokens=cell.tokens), color=colour,
                    lw=1.2, label=f"D = {cell.tokens:.2g}")  # fmt: skip
            ax.plot(dense, np.exp(-loss.loss(dense, params=n, tokens=cell.tokens)),
                    color=colour, lw=0.9, ls="--")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"N = {n:,.0f}")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(f"{metric}@k")
    axes.flat[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Mini-T² {metric}@k per cell: measured (dots), Approach 2 (solid), "
        "Approach 1 exp(−L) (dashed)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def iso_budget(out: Path) -> None:
    plt = _plt()
    report = json.loads((GRID / "plan_check.json").read_text())
    panels = []
    for metric in ("pass", "maj"):
        entry = report[f"accuracy/{metric}"]
        for form in ("buildable", "deployment"):
            plan = entry[form]
            if "measured" in plan["t2"]:
                panels.append((f"{metric}@k, {'paper' if form == 'buildable' else form}", plan))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), squeeze=False)
    for ax, (title, plan) in zip(axes.flat, panels, strict=True):
        names = []
        for i, who in enumerate(("t2", "chinchilla")):
            c = plan[who]
            names.append(f"{'T²' if who == 't2' else 'Chinchilla'}\n{c['size']} k={c['k']}\n"
                         f"{c['tokens'] / c['params']:.0f} tok/param")  # fmt: skip
            ax.bar(
                i - 0.18,
                c["predicted"],
                0.36,
                color="#9ecae1",
                label="predicted" if i == 0 else None,
            )
            ax.bar(
                i + 0.18, c["measured"], 0.36, color="#3182bd", label="measured" if i == 0 else None
            )
        ax.set_xticks([0, 1], names, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes.flat[0].set_ylabel("accuracy at the budget's k")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Iso-budget check: T²-planned vs Chinchilla-optimal, same C_train", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    loss_vs_tokens(DOCS / "mini-t2-loss.png")
    passk_cells(DOCS / "mini-t2-passk.png", "pass")
    passk_cells(DOCS / "mini-t2-majk.png", "maj")
    if (GRID / "plan_check.json").is_file():
        iso_budget(DOCS / "mini-t2-iso-budget.png")
    print("wrote docs/mini-t2-{loss,passk,majk,iso-budget}.png")


if __name__ == "__main__":
    main()
