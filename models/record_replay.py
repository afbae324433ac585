"""Record the shipped tiny model's replay through vLLM: held-back questions × many samples.

Why through vLLM and not torch: the numbers must be what the server will see (same sampler,
same tokenizer, same chat template). Writes, next to the model:
- `replay.jsonl` in the shared replay schema (see ../shared/data/README.md);
- `passk.csv` (model,params,tokens,problem,samples,correct) for `t2serve fit`;
- `measured.json`: single-sample and majority-of-16 accuracy, the model card's numbers.

Run: `python -m models.record_replay` (≈ 5 min on 2 CPU cores; --json for a quiet summary).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.aggregate.extract import last_number
from models.train_tiny import DEFAULT_TASK, chat_prompt, gold, heldout_questions, question_text
from server.engine import EngineConfig, SampleEngine, start_engine

MODEL_NAME = "tiny-arith"


def majority(answers: list[str | None]) -> str | None:
    """The most common non-abstaining answer (ties: the one seen first)."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def summarize(rows: list[dict[str, Any]], vote_k: int = 16) -> dict[str, float]:
    """Single-sample accuracy and majority-of-k accuracy (over disjoint groups of k)."""
    single: list[float] = []
    voted: list[float] = []
    for row in rows:
        answers = [s["answer"] for s in row["samples"]]
        single.append(sum(s["correct"] for s in row["samples"]) / len(answers))
        groups = [answers[i : i + vote_k] for i in range(0, len(answers) - vote_k + 1, vote_k)]
        voted.append(sum(majority(g) == row["gold"] for g in groups) / len(groups))
    n = len(rows)
    return {
        "questions": n,
        "samples_per_question": len(rows[0]["samples"]) if rows else 0,
        "single_sample_accuracy": round(sum(single) / n, 4),
        f"majority_of_{vote_k}_accuracy": round(sum(voted) / n, 4),
        "pass_at_1_questions_never_right": round(sum(s == 0 for s in single) / n, 4),
    }


async def record(args: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import Progress

    model_dir = Path(args.model)
    training = json.loads((model_dir / "training.json").read_text())
    engine: SampleEngine = await start_engine(
        EngineConfig(
            model_path=str(model_dir),
            kv_cache_memory_bytes=512 * 2**20,
            max_num_seqs=256,
            seed=args.seed,
            log_stats=False,
        )
    )
    task = training["args"].get("task", DEFAULT_TASK)
    questions = heldout_questions(args.questions, task=task)
    params = engine.params(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    rows: list[dict[str, Any]] = [{} for _ in questions]
    sem = asyncio.Semaphore(args.concurrency)
    rng = random.Random(args.seed)
    seeds = [rng.randrange(2**31) for _ in questions]

    async def one(i: int, progress: Progress | None, task: Any) -> None:
        q = questions[i]
        prompt = engine.apply_chat_template([{"role": "user", "content": question_text(q)}])
        assert prompt == chat_prompt(q)
        async with sem:
            samples = [
                s
                async for s in engine.sample(
                    prompt, args.samples, replace(params, seed=seeds[i]), f"replay-{i}"
                )
            ]
        samples.sort(key=lambda s: s.index)
        answers = [last_number(s.text) for s in samples]
        rows[i] = {
            "id": f"tiny-arith-{i:04d}",
            "question": question_text(q),
            "gold": gold(q),
            "samples": [
                {"text": s.text, "answer": a, "correct": a == gold(q)}
                for s, a in zip(samples, answers, strict=True)
            ],
            "model": MODEL_NAME,
            "source": "t2serve models/record_replay.py (vLLM, T=1.0, top_p=1.0)",
        }
        if progress is not None:
            progress.advance(task)

    try:
        if args.json or not sys.stderr.isatty():
            await asyncio.gather(*(one(i, None, None) for i in range(len(questions))))
        else:
            with Progress() as progress:
                task = progress.add_task("recording", total=len(questions))
                await asyncio.gather(*(one(i, progress, task) for i in range(len(questions))))
    finally:
        await engine.shutdown()

    with (model_dir / "replay.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with (model_dir / "passk.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "params", "tokens", "problem", "samples", "correct"])
        for row in rows:
            right = sum(s["correct"] for s in row["samples"])
            w.writerow(
                [MODEL_NAME, training["params"], training["train_tokens"], row["id"],
                 len(row["samples"]), right]
            )  # fmt: skip
    summary = summarize(rows)
    summary.update({"temperature": 1.0, "max_tokens": args.max_tokens, "seed": args.seed})
    (model_dir / "measured.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Record the tiny model's replay through vLLM.")
    p.add_argument("--model", default="models/tiny-arith")
    p.add_argument("--questions", type=int, default=320)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=6, help="questions in flight")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json", action="store_true", help="print only the summary JSON")
    args = p.parse_args(argv)
    summary = asyncio.run(record(args))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
