"""Train `models/tiny-arith`: a character-level Llama that does two-step arithmetic, on purpose
only half-well, so that sampling it many times and voting pays off (the whole point of t2serve).

Task (default `single`): "Q: 7+8-9=?" → "7+8=15;15-9=6;A: 6". The held-back evaluation
questions (`heldout_questions`, 320 of the 729) never appear in training, nor do the dev ones.

Why stop on a target accuracy rather than a step count: the model must stay *uncertain* at
temperature 1.0 (single-sample accuracy ≈ 0.4), with errors spread enough for votes to fix.
Training is seeded and deterministic for a given thread count; every `--eval-every` steps it
samples the held-back dev questions at T=1 and stops once the accuracy reaches
`--target-accuracy` (or at `--max-steps`).

Run: `python -m models.train_tiny --out models/tiny-arith` (1-4 min on a busy 2-core CPU: 300
steps, stopping at dev accuracy 0.47; four runs with this seed had identical loss curves).
Keep `--threads 1` on a shared machine: OpenMP threads spin-waiting on an oversubscribed CPU
made training ten times slower.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = "Work it out step by step."
SPECIALS = ["<pad>", "<unk>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# Chat template: no BOS (so the chat endpoint and plain completion prompts tokenize the same),
# a default system message so every chat prompt fills one 32-token KV block (prefix caching
# reuses only full blocks).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>" + SYSTEM_PROMPT + "{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
EVAL_SEED = 20260401  # the held-back questions; shared with the recording script
DEV_SEED = 7


TASKS = ("single", "mixed")
DEFAULT_TASK = "single"


def make_question(rng: random.Random, task: str = DEFAULT_TASK) -> tuple[int, int, int]:
    """Three operands, a+b-c. `single`: one-digit operands ("7+8-9", 729 questions, learnable
    in minutes on a busy CPU); `mixed`: a two-digit first operand ("47+8-9", 7,290 questions,
    needs far longer training than we can give it here)."""
    if task == "mixed":
        return rng.randint(10, 99), rng.randint(1, 9), rng.randint(1, 9)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return a, b, rng.randint(1, min(9, a + b))


def question_text(q: tuple[int, int, int]) -> str:
    a, b, c = q
    return f"Q: {a}+{b}-{c}=?"


def worked_answer(q: tuple[int, int, int]) -> str:
    a, b, c = q
    return f"{a}+{b}={a + b};{a + b}-{c}={a + b - c};A: {a + b - c}"


def gold(q: tuple[int, int, int]) -> str:
    a, b, c = q
    return str(a + b - c)


def heldout_questions(
    count: int, seed: int = EVAL_SEED, task: str = DEFAULT_TASK
) -> list[tuple[int, int, int]]:
    """Distinct held-back questions, reproducible from the seed."""
    rng = random.Random(seed)
    seen: dict[tuple[int, int, int], None] = {}
    while len(seen) < count:
        seen.setdefault(make_question(rng, task), None)
    return list(seen)


def chat_prompt(q: tuple[int, int, int]) -> str:
    """The chat template rendered for one user question (what the engine's template produces)."""
    return f"<|system|>{SYSTEM_PROMPT}<|user|>{question_text(q)}<|assistant|>"


def build_tokenizer() -> Any:
    """Character-level tokenizer: every printable ASCII character is one token."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _batches(
    tokenizer: Any, batch: int, seed: int, excluded: set[tuple[int, int, int]], task: str
) -> Iterator[tuple[Any, Any]]:
    """Endless (input_ids, labels) batches; the loss covers only the assistant's answer."""
    import torch

    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    while True:
        rows: list[tuple[list[int], int]] = []
        while len(rows) < batch:
            q = make_question(rng, task)
            if q in excluded:
                continue
            prompt = tokenizer.encode(chat_prompt(q), add_special_tokens=False)
            answer = tokenizer.encode(worked_answer(q), add_special_tokens=False)
            rows.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
        width = max(len(r) for r, _ in rows)
        ids = torch.full((batch, width), pad, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for i, (row, n_prompt) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
        yield ids, labels


def sampled_accuracy(
    model: Any, tokenizer: Any, questions: list[tuple[int, int, int]], seed: int
) -> float:
    """Single-sample accuracy at temperature 1.0 (one sample per question), with torch."""
    import torch

    from controller.aggregate.extract import last_number

    torch.manual_seed(seed)
    prompts = [chat_prompt(q) for q in questions]  # all the same length: no padding needed
    ids = torch.tensor([tokenizer.encode(p, add_special_tokens=False) for p in prompts])
    model.eval()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=32,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.train()
    texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    hits = sum(last_number(t) == gold(q) for t, q in zip(texts, questions, strict=True))
    return hits / len(questions)


def llama_config(hidden: int, layers: int, tokenizer: Any) -> Any:
    """The one Llama shape every model we train has (the tiny model and the Mini-T² grid), at a
    width and depth: what vLLM's CPU build needs is set here once."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128,  # 101 used; a round size
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,  # head dim 32: vLLM's CPU attention needs ≥ 32
        num_key_value_heads=hidden // 32,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    config = llama_config(args.hidden, args.layers, tokenizer)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    heldout = set(heldout_questions(args.heldout, task=args.task))
    dev = heldout_questions(args.dev, seed=DEV_SEED, task=args.task)
    dev = [q for q in dev if q not in heldout]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    batches = _batches(tokenizer, args.batch, args.seed, heldout | set(dev), args.task)
    started = time.monotonic()
    history: list[dict[str, float]] = []
    tokens_seen = 0
    step = 0
    acc = 0.0
    for step in range(1, args.max_steps + 1):
        ids, labels = next(batches)
        tokens_seen += int(ids.numel())
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            took = time.monotonic() - started
            print(f"step {step} loss {loss.item():.4f} {took:.0f}s", flush=True)
        if step % args.eval_every == 0:
            acc = sampled_accuracy(model, tokenizer, dev, seed=args.seed + step)
            history.append({"step": step, "loss": float(loss.item()), "dev_accuracy": acc})
            print(f"step {step} dev accuracy@T=1 {acc:.3f}", flush=True)
            if acc >= args.target_accuracy:
                break
    elapsed = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary: dict[str, object] = {
        "params": params,
        "steps": step,
        "train_tokens": tokens_seen,
        "train_seconds": round(elapsed, 1),
        "final_dev_accuracy": acc,
        "history": history,
        "args": vars(args),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="models/tiny-arith")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--task", choices=TASKS, default=DEFAULT_TASK)
    p.add_argument("--threads", type=int, default=1, help="more threads thrash on a busy CPU")
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target-accuracy", type=float, default=0.45)
    p.add_argument("--heldout", type=int, default=320, help="held-back questions for the replay")
    p.add_argument("--dev", type=int, default=100, help="dev questions for the stopping rule")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    summary = train(parse_args(argv))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
