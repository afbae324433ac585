"""The Mini-T² grid's task: a chain of four one-digit operands, "Q: 7+8-9+4=?".

Why not tiny-arith's `single` task: its 729 questions leave 409 to train on, which a model of a
few hundred thousand parameters memorises within a few hundred steps, so loss and accuracy stop
improving with D. Four operands give 5,805 distinct questions and a three-step worked answer
("7+8=15;15-9=6;6+4=10;A: 10") whose steps are each as easy as tiny-arith's, so small models
learn it in minutes but accuracy compounds over the steps and does not saturate.

Three disjoint question sets, all reproducible from their seeds: the 320 held-back evaluation
questions (sampled through vLLM for pass@k), 256 validation questions (the held-out pretraining
loss), and everything else, which is the training distribution.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from models.train_tiny import SYSTEM_PROMPT

Question = tuple[int, int, int, int]
EVAL_SEED = 20260411
VAL_SEED = 11
EVAL_QUESTIONS = 320
VAL_QUESTIONS = 256


def make_question(rng: random.Random) -> Question:
    """a+b-c+d with one-digit operands, the running value never negative."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return a, b, rng.randint(1, min(9, a + b)), rng.randint(1, 9)


def all_questions() -> list[Question]:
    """Every question of the task, in a fixed order (5,805 of them)."""
    return [
        (a, b, c, d)
        for a in range(1, 10)
        for b in range(1, 10)
        for c in range(1, min(9, a + b) + 1)
        for d in range(1, 10)
    ]


def question_text(q: Question) -> str:
    a, b, c, d = q
    return f"Q: {a}+{b}-{c}+{d}=?"


def worked_answer(q: Question) -> str:
    a, b, c, d = q
    s1 = a + b
    s2 = s1 - c
    return f"{a}+{b}={s1};{s1}-{c}={s2};{s2}+{d}={s2 + d};A: {s2 + d}"


def gold(q: Question) -> str:
    a, b, c, d = q
    return str(a + b - c + d)


def chat_prompt(q: Question) -> str:
    """The chat template rendered for one question (what the engine's template produces)."""
    return f"<|system|>{SYSTEM_PROMPT}<|user|>{question_text(q)}<|assistant|>"


def _distinct(count: int, seed: int, exclude: set[Question]) -> list[Question]:
    rng = random.Random(seed)
    seen: dict[Question, None] = {}
    while len(seen) < count:
        q = make_question(rng)
        if q not in exclude:
            seen.setdefault(q, None)
    return list(seen)


def eval_questions(count: int = EVAL_QUESTIONS) -> list[Question]:
    """The held-back questions whose pass@k the grid measures; never trained on."""
    return _distinct(count, EVAL_SEED, set())


def val_questions(count: int = VAL_QUESTIONS) -> list[Question]:
    """The validation questions (held-out loss), disjoint from the evaluation ones."""
    return _distinct(count, VAL_SEED, set(eval_questions()))


def training_pool() -> list[Question]:
    """Every question neither held back nor in validation."""
    banned = set(eval_questions()) | set(val_questions())
    return [q for q in all_questions() if q not in banned]


def encode(tokenizer: Any, q: Question) -> tuple[list[int], int]:
    """(prompt + answer + eos token ids, prompt length): the loss covers only the answer."""
    prompt = tokenizer.encode(chat_prompt(q), add_special_tokens=False)
    answer = tokenizer.encode(worked_answer(q), add_special_tokens=False)
    return prompt + answer + [tokenizer.eos_token_id], len(prompt)


def collate(tokenizer: Any, rows: list[tuple[list[int], int]]) -> tuple[Any, Any, int]:
    """(input_ids, labels, real tokens) of a padded batch; labels -100 outside the answers."""
    import torch

    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    return ids, labels, sum(len(r) for r, _ in rows)


def batches(tokenizer: Any, batch: int, seed: int) -> Iterator[tuple[Any, Any, int]]:
    """Endless seeded batches of training-pool questions (drawn with replacement)."""
    pool = training_pool()
    rng = random.Random(seed)
    encoded = {q: encode(tokenizer, q) for q in pool}
    while True:
        yield collate(tokenizer, [encoded[rng.choice(pool)] for _ in range(batch)])


def question_rows(split: str) -> list[dict[str, str]]:
    """A question set as `t2serve calibrate --data` reads it: id, question, gold.

    `val` (256, never trained on) calibrates the served chain models; `eval` (320, the
    shipped replays' questions, in the same order) is held back for evaluation.
    """
    sets = {"eval": eval_questions, "val": val_questions}
    if split not in sets:
        raise ValueError(f"unknown split {split!r}; choose eval or val")
    return [
        {"id": f"chain-{split}-{i:04d}", "question": question_text(q), "gold": gold(q)}
        for i, q in enumerate(sets[split]())
    ]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Write a chain question set as JSON Lines.")
    parser.add_argument("--split", choices=("eval", "val"), default="val")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in question_rows(args.split))
