"""Ship one Mini-T² grid checkpoint as a served model: weights, tokenizer, replay, pass@k, curves.

Copies the checkpoint (without its training state) to `models/<name>/`, records its replay on
the 320 held-back questions × 64 samples through vLLM (same sampler as the grid), and writes:
- `replay.jsonl` (the shared replay schema) and `passk.csv` (model,params,tokens,...,correct);
- `measured.json`: single-sample and majority-of-16 accuracy;
- `curves.json`: the per-model Beta fit, as `t2serve fit --approach beta` writes it.

Run: `python -m models.ship_grid_model --cell h32l2-d4800000 --name tiny-chain-31k`.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Any

from cli.calibrate_files import measured_summary as summarize
from controller.scaling.data import load_counts
from controller.scaling.fit import fit_beta_models
from models import chain

GRID = Path("models/mini-t2")
SHIPPED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json", "chat_template.jinja", "training.json")  # fmt: skip


def ship(cell: str, name: str, samples: int = 64) -> dict[str, object]:
    from models.grid_sample import CellSampler

    src = GRID / "checkpoints" / cell
    dest = Path("models") / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in SHIPPED:
        if (src / fname).is_file():
            shutil.copy2(src / fname, dest / fname)
    training = json.loads((src / "training.json").read_text())
    questions = chain.eval_questions()
    sampler = CellSampler(dest, seed=2026)
    try:
        counts = sampler.sample(questions, samples, keep_texts=True)
    finally:
        sampler.shutdown()
    rows: list[dict[str, Any]] = []
    for i, (q, c) in enumerate(zip(questions, counts, strict=True)):
        from controller.aggregate.extract import last_number

        answers = [last_number(t) for t in c.texts]
        rows.append(
            {
                "id": f"{name}-{i:04d}",
                "question": chain.question_text(q),
                "gold": c.gold,
                "samples": [
                    {"text": t, "answer": a, "correct": a == c.gold}
                    for t, a in zip(c.texts, answers, strict=True)
                ],
                "model": name,
                "source": f"t2serve models/ship_grid_model.py from grid cell {cell} "
                "(vLLM, T=1.0, top_p=1.0)",
            }
        )
    with (dest / "replay.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with (dest / "passk.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "params", "tokens", "problem", "samples", "correct"])
        for row in rows:
            right = sum(s["correct"] for s in row["samples"])
            w.writerow([name, training["params"], training["train_tokens"], row["id"],
                        len(row["samples"]), right])  # fmt: skip
    summary: dict[str, object] = dict(summarize(rows))
    summary.update({"temperature": 1.0, "max_tokens": 40, "grid_cell": cell})
    (dest / "measured.json").write_text(json.dumps(summary, indent=2) + "\n")
    curves = fit_beta_models(load_counts(dest / "passk.csv"))
    curves.save(dest / "curves.json")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Ship a Mini-T² grid checkpoint as a served model.")
    p.add_argument("--cell", required=True, help="grid cell, e.g. h32l2-d4800000")
    p.add_argument("--name", required=True, help="model folder name under models/")
    args = p.parse_args(argv)
    print(json.dumps(ship(args.cell, args.name), indent=2))


if __name__ == "__main__":
    main()
