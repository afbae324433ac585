"""Fitted pass@k curves against measured points: one panel per model size, a line per checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.scaling.curves import Curves
from controller.scaling.data import CountTable
from controller.scaling.fit import K_GRID, cell_neg_log_pass, cell_pass, floor_samples, usable_k


def render(curves: Curves, table: CountTable, out: str | Path) -> None:
    """Write a PNG: measured points (dots) and the fit's prediction (lines) vs k.

    Loss fits are drawn in the quantity they were fitted to, the floored mean -log pass_i@k
    (exp(-L) is a geometric mean and would not match the arithmetic pass@k); the others in pass@k.
    """
    is_loss = curves.approach == "loss"
    metric = str(curves.diagnostics.get("metric", "pass"))
    n_floor = int(curves.diagnostics.get("floor_samples", 0)) or floor_samples(table.cells)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({c.params for c in table.cells})
    cols = min(3, len(sizes))
    rows = (len(sizes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    token_values = sorted({c.tokens for c in table.cells})
    cmap = plt.get_cmap("viridis")
    colour = {d: cmap(i / max(len(token_values) - 1, 1)) for i, d in enumerate(token_values)}
    for ax, size in zip(axes.flat, sizes, strict=False):
        for cell in (c for c in table.cells if c.params == size):
            ks = usable_k(cell, K_GRID)
            if not ks:
                continue
            measured = (
                cell_neg_log_pass(cell, ks, n_floor, metric)
                if is_loss
                else cell_pass(cell, ks, metric)
            )
            shown = measured > 0
            ax.scatter(np.array(ks)[shown], measured[shown], s=12, color=colour[cell.tokens])
            dense = np.unique(np.geomspace(1, max(ks), 40).round())
            try:
                if is_loss:
                    pred = curves.loss(dense, params=cell.params, tokens=cell.tokens)
                else:
                    pred = curves.pass_at_k(
                        dense,
                        params=cell.params,
                        tokens=cell.tokens,
                        model=cell.model if curves.approach == "beta" else None,
                    )
            except ValueError:
                continue  # e.g. a beta fit without this model
            ax.plot(dense, pred, color=colour[cell.tokens], lw=1.2, label=f"{cell.tokens:.0e} tok")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if is_loss:
            ax.set_ylim(0.1, None)
        ax.set_title(f"N = {size:.3g}")
        ax.set_xlabel("k")
        ax.set_ylabel(f"mean −log {metric}@k (floored)" if is_loss else f"{metric}@k")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(sizes) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower right", fontsize=7, ncol=2)
    what = f"floored mean −log {metric}@k" if is_loss else f"{metric}@k"
    fig.suptitle(f"T² {curves.approach} fit (lines) vs measured {what} (dots)")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
