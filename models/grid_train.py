"""Train one model size of the Mini-T² grid, saving a checkpoint at each training-token count.

Why a constant learning rate (after a 20-step warm-up): the checkpoint at D tokens is then
bit for bit the model a separate run stopped at D tokens would be (same seed, same batches, same
schedule so far), so one run per size gives fair "model trained on D tokens" cells for every D.
A cosine or linear decay would not: its early checkpoints were trained at a rate meant for a
longer run, and would look worse than a run planned for D tokens. The cost is a loss a little
above what an annealed run reaches, the same recipe for every cell, so the law's shape holds.

Each checkpoint directory holds the weights vLLM loads, the tokenizer, and `state.pt` (model,
optimiser and data-order state), so an interrupted run resumes from its last checkpoint and
reproduces the same later checkpoints.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import chain
from models.train_tiny import build_tokenizer, llama_config

WARMUP_STEPS = 20


@dataclass(frozen=True)
class Size:
    """A model shape: hidden width (head dim 32) and layer count."""

    hidden: int
    layers: int

    @property
    def label(self) -> str:
        return f"h{self.hidden}l{self.layers}"


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 1234
    batch: int = 64
    lr: float = 3e-3
    threads: int = 1


def count_params(size: Size) -> int:
    """Parameters of a size without building it twice (embeddings included, tied once)."""
    h, layers = size.hidden, size.layers
    per_layer = 4 * h * h + 3 * h * 3 * h + 2 * h  # attention, SwiGLU MLP, two RMSNorms
    return 128 * h + layers * per_layer + h


def tokens_per_batch(batch: int) -> int:
    """Real (unpadded) tokens in one batch: every chain sequence has 68-69 tokens; the shortest
    bounds a batch from below, which is what a too-small token count is checked against."""
    tok = build_tokenizer()
    shortest = min(len(chain.encode(tok, q)[0]) for q in chain.all_questions()[:200])
    return batch * shortest


class _Batches:
    """Seeded batches of training-pool questions whose position can be saved and restored."""

    def __init__(self, tokenizer: Any, batch: int, seed: int) -> None:
        self.tokenizer = tokenizer
        self.batch = batch
        self.pool = chain.training_pool()
        self.encoded = {q: chain.encode(tokenizer, q) for q in self.pool}
        self.rng = random.Random(seed)

    def next(self) -> tuple[Any, Any, int]:
        rows = [self.encoded[self.rng.choice(self.pool)] for _ in range(self.batch)]
        return chain.collate(self.tokenizer, rows)


def validation_loss(model: Any, tokenizer: Any) -> float:
    """Mean cross-entropy per answer token on the validation questions (never trained on)."""
    import torch

    rows = [chain.encode(tokenizer, q) for q in chain.val_questions()]
    ids, labels, _ = chain.collate(tokenizer, rows)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
        )
    model.train()
    return float(loss.item())


def checkpoint_dir(root: Path, size: Size, tokens: int) -> Path:
    return root / f"{size.label}-d{tokens}"


def _save(
    path: Path, model: Any, tokenizer: Any, state: dict[str, Any], info: dict[str, Any]
) -> None:
    import torch
    from transformers import GenerationConfig

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "state.pt")
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint exists only once it is complete


def train_size(
    size: Size,
    targets: list[int],
    root: Path,
    settings: TrainSettings,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `size` to the largest target, checkpointing when tokens seen first reach each one.

    Resumes from the latest complete checkpoint under `root` before the first missing target
    (the saved state continues the run exactly). Returns each target's info
    (params, tokens actually seen, steps, validation loss, seconds).
    """
    targets = sorted(targets)

    def done(target: int) -> bool:
        return (checkpoint_dir(root, size, target) / "training.json").is_file()

    run = _Run.start(size, settings)
    missing = [t for t in targets if not done(t)]
    below = [t for t in targets if done(t) and missing and t < missing[0]]
    if below:  # resume from the latest complete checkpoint before the first missing one
        run.resume(checkpoint_dir(root, size, below[-1]) / "state.pt")
    by_target = {
        t: json.loads((checkpoint_dir(root, size, t) / "training.json").read_text())
        for t in targets
        if done(t)
    }
    started = time.monotonic() - run.seconds
    for target in missing:
        run.train_until(target)
        run.seconds = time.monotonic() - started
        info = run.info(target)
        _save(checkpoint_dir(root, size, target), run.model, run.tokenizer, run.state(), info)
        by_target[target] = info
        if on_checkpoint is not None:
            on_checkpoint(target, info)
    return [by_target[t] for t in targets]


@dataclass
class _Run:
    """One size's training run: model, optimiser, schedule and data order, and how far it got
    (steps, tokens seen, seconds), all of which a checkpoint saves and a resume restores."""

    size: Size
    settings: TrainSettings
    tokenizer: Any
    model: Any
    opt: Any
    sched: Any
    data: _Batches
    step: int = 0
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def start(cls, size: Size, settings: TrainSettings) -> _Run:
        import torch
        from transformers import LlamaForCausalLM

        torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        tokenizer = build_tokenizer()
        model = LlamaForCausalLM(llama_config(size.hidden, size.layers, tokenizer))
        opt = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.98)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
        data = _Batches(tokenizer, settings.batch, settings.seed)
        return cls(size, settings, tokenizer, model, opt, sched, data)

    def resume(self, state_path: Path) -> None:
        import torch

        state = torch.load(state_path, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.data.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.seen, self.seconds = state["step"], state["tokens"], state["seconds"]

    def train_until(self, target: int) -> None:
        """Optimiser steps until the tokens seen reach `target`."""
        import torch

        while self.seen < target:
            ids, labels, real = self.data.next()
            loss = self.model(input_ids=ids, labels=labels).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            self.step += 1
            self.seen += real

    def info(self, target: int) -> dict[str, Any]:
        """What a checkpoint's training.json records."""
        return {
            "size": self.size.label,
            "hidden": self.size.hidden,
            "layers": self.size.layers,
            "params": sum(p.numel() for p in self.model.parameters()),
            "target_tokens": target,
            "train_tokens": self.seen,
            "steps": self.step,
            "validation_loss": validation_loss(self.model, self.tokenizer),
            "train_seconds": round(self.seconds, 1),
            "schedule": (
                f"AdamW lr {self.settings.lr} constant after {WARMUP_STEPS} warm-up steps"
            ),
            "batch": self.settings.batch,
            "seed": self.settings.seed,
            "task": "chain (models/chain.py)",
        }

    def state(self) -> dict[str, Any]:
        """What `resume` needs to continue this run exactly."""
        import torch

        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": self.data.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "tokens": self.seen,
            "seconds": self.seconds,
        }
