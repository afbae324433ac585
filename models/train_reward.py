"""Train `models/tiny-chain-rm`: a tiny outcome reward model for the chain task.

A `LlamaForSequenceClassification` (one logit, read at the last token, as vLLM's pooling runner
reads it) on the trunk of `models/tiny-chain-252k`, trained to say whether a sample's final
answer is right. Input: the chat prompt the generator saw followed by the sample's text, exactly
what `server/verifiers.py` sends (`{question}{candidate}`).

Training data, labelled by the task's own checker (answer == gold):
- the recorded samples of both served chain models (`models/tiny-chain-*/replay.jsonl`) on half
  of the 320 evaluation questions; the other half is **held back** (`held_back_questions`) for
  the AUC on the card and for `python -m bench verifiers`, never trained on;
- synthetic worked answers on the training pool (`models.chain.training_pool`): the right one
  and ones with a wrong step (the error carried on, or a copying slip), so the model also sees
  questions beyond the 160.

Run: `python -m models.train_reward --out models/tiny-chain-rm` (about two minutes on one
thread of the loaded 2-core box). Also writes `score_map.json`: an isotonic map score →
P(correct) fit on the training questions' samples (`controller.aggregate.score_map`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from models.chain import Question, chat_prompt, gold, training_pool, worked_answer

TRUNK = Path("models/tiny-chain-252k")
REPLAYS = (Path("models/tiny-chain-31k/replay.jsonl"), Path("models/tiny-chain-252k/replay.jsonl"))
SPLIT_SALT = "tiny-chain-rm"


def held_back(question: str) -> bool:
    """Half of the evaluation questions, fixed by a hash of the question text (not by file or
    order, so every replay of the same question lands on the same side)."""
    return hashlib.sha256(f"{SPLIT_SALT}:{question}".encode()).digest()[0] % 2 == 1


def replay_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompt_of(question: str) -> str:
    """The chat prompt for a replay question "Q: a+b-c+d=?" (what the generator was given)."""
    return chat_prompt(_question(question))


Example = tuple[str, int, str, int, str]
"""(model input, outcome label, question, prompt characters, the right worked answer)."""


def labelled(rows: list[dict[str, Any]], keep_held_back: bool) -> list[Example]:
    """Every sample on one side of the split, labelled by its final answer."""
    out = []
    for row in rows:
        if held_back(row["question"]) != keep_held_back:
            continue
        prompt = prompt_of(row["question"])
        right = worked_answer(_question(row["question"]))
        for s in row["samples"]:
            label = int(bool(s["correct"]))
            out.append((prompt + s["text"], label, row["question"], len(prompt), right))
    return out


def _question(question: str) -> Question:
    nums = question.removeprefix("Q: ").removesuffix("=?").replace("-", "+").split("+")
    a, b, c, d = (int(n) for n in nums)
    return a, b, c, d


def _wrong_chain(q: Question, rng: random.Random) -> str:
    """A worked answer with one wrong step: the slip is carried on, or the next step copies the
    right value (both occur in the served models' samples)."""
    a, b, c, d = q
    right = [a + b, a + b - c, a + b - c + d]
    step = rng.randrange(3)
    wrong = list(right)
    wrong[step] = max(0, right[step] + rng.choice([-3, -2, -1, 1, 2, 3]))
    if wrong[step] == right[step]:
        wrong[step] += 1
    carried = rng.random() < 0.7
    lhs = [a, wrong[0] if carried else right[0], wrong[1] if carried else right[1]]
    for j in range(step + 1, 3):
        lhs[j] = wrong[j - 1] if carried else right[j - 1]
        wrong[j] = lhs[j] - c if j == 1 else lhs[j] + d
    return f"{a}+{b}={wrong[0]};{lhs[1]}-{c}={wrong[1]};{lhs[2]}+{d}={wrong[2]};A: {wrong[2]}"


def synthetic(count: int, seed: int) -> list[Example]:
    """Worked answers on training-pool questions, half right, half with a slip; labelled by
    outcome (a copying slip in an early step can still end on the right answer)."""
    rng = random.Random(seed)
    pool = training_pool()
    out = []
    for _ in range(count):
        q = rng.choice(pool)
        text = worked_answer(q) if rng.random() < 0.5 else _wrong_chain(q, rng)
        label = int(text.rsplit("A: ", 1)[-1] == gold(q))
        prompt = chat_prompt(q)
        out.append((prompt + text, label, "", len(prompt), worked_answer(q)))
    return out


def auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (ties count half): P(score of a right > score of a wrong)."""
    import numpy as np
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def build_model(trunk: Path, extra_layers: int) -> Any:
    """The generator's trunk plus `extra_layers` new layers on top, which start as the identity
    (zero output projections). Why more layers: a token's hidden state only sees the layers
    below it at earlier positions, so in the 2-layer generator no position can compare the
    token it reads with what the model predicted for it; the layers on top can (the dense
    labels teach them to flag the step where a chain goes wrong)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(trunk)
    base_layers = int(cfg.num_hidden_layers)
    cfg.num_hidden_layers = base_layers + extra_layers
    cfg.architectures = ["LlamaForSequenceClassification"]
    cfg.num_labels = 1
    cfg.id2label, cfg.label2id = {0: "correct"}, {"correct": 0}
    model = LlamaForSequenceClassification(cfg)
    lm = LlamaForCausalLM.from_pretrained(trunk, dtype=torch.float32)
    state = lm.model.state_dict()
    final_norm = {k: v for k, v in state.items() if k.startswith("norm.")}
    missing, _ = model.model.load_state_dict(state, strict=False)
    assert all(k.startswith("layers.") and int(k.split(".")[1]) >= base_layers for k in missing)
    with torch.no_grad():
        for layer in model.model.layers[base_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.copy_(final_norm["norm.weight"])
    return model


def _encode(tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
    """Right-padded ids and the index of each row's last real token (where the head reads)."""
    import torch

    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) - 1 for r in rows])


def prefix_labels(tokenizer: Any, example: Example) -> list[tuple[int, float]]:
    """(token position, label) over the sample's tokens: 1 while the text so far is a prefix
    of the right worked answer. Dense supervision: the head learns to flag a wrong step where
    it happens, and the last token (what vLLM reads) to carry the flag; outcome rules there."""
    text, _, _, n_prompt, right = example
    pos = len(tokenizer.encode(text[:n_prompt], add_special_tokens=False))
    answer = text[n_prompt:]
    if len(tokenizer.encode(answer, add_special_tokens=False)) != len(answer):
        return []  # not one token per character (a stray symbol): outcome label only
    return [(pos + i, float(answer[: i + 1] == right[: i + 1])) for i in range(len(answer))]


def logits(model: Any, tokenizer: Any, texts: list[str], batch: int = 256) -> list[float]:
    import torch

    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            out += _forward(model, *_encode(tokenizer, texts[i : i + batch])).tolist()
    return out


def _forward(model: Any, ids: Any, last: Any) -> Any:
    import torch

    hidden = model.model(input_ids=ids).last_hidden_state  # causal: padding on the right is unseen
    return model.score(hidden[torch.arange(len(last)), last]).squeeze(-1)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    replays = {p.parent.name: replay_rows(p) for p in REPLAYS}
    data = [x for rows in replays.values() for x in labelled(rows, keep_held_back=False)]
    replay_count = len(data)
    data += synthetic(args.synthetic, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(TRUNK)
    model = build_model(TRUNK, args.extra_layers)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        rows = [rng.choice(data) for _ in range(args.batch)]
        ids, last = _encode(tokenizer, [r[0] for r in rows])
        target = torch.tensor([float(r[1]) for r in rows])
        every = model.score(model.model(input_ids=ids).last_hidden_state).squeeze(-1)
        loss = loss_fn(every[torch.arange(len(last)), last], target)
        dense = [(i, p, y) for i, r in enumerate(rows) for p, y in prefix_labels(tokenizer, r)]
        if dense and args.dense > 0:
            rows_i = torch.tensor([d[0] for d in dense])
            cols = torch.tensor([d[1] for d in dense])
            ys = torch.tensor([d[2] for d in dense])
            loss = loss + args.dense * loss_fn(every[rows_i, cols], ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.4f} {time.monotonic() - started:.0f}s")
    model.eval()
    report: dict[str, Any] = {
        "trunk": str(TRUNK),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(time.monotonic() - started, 1),
        "replay_samples": replay_count,
        "synthetic_samples": args.synthetic,
        "dense_weight": args.dense,
        "layers": int(model.config.num_hidden_layers),
        "auc_held_back": {},
    }
    for name, recorded in replays.items():
        held = labelled(recorded, keep_held_back=True)
        held = random.Random(args.seed).sample(held, min(len(held), args.eval_samples))
        scores = logits(model, tokenizer, [h[0] for h in held])
        report["auc_held_back"][name] = {
            "questions": len({h[2] for h in held}),
            "samples": len(held),
            "auc": round(auc(scores, [h[1] for h in held]), 4),
        }
    train_rows = [x for rows in replays.values() for x in labelled(rows, keep_held_back=False)]
    train_rows = random.Random(args.seed).sample(train_rows, min(len(train_rows), 4000))
    report["calibration_fit_on"] = f"{len(train_rows)} samples of the training questions"
    save(model, tokenizer, Path(args.out), report, train_rows)
    return report


def save(
    model: Any, tokenizer: Any, out: Path, report: dict[str, Any], calib: list[Example]
) -> None:
    import numpy as np

    from controller.aggregate.score_map import IsotonicScoreMap

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(TRUNK / "chat_template.jinja", out / "chat_template.jinja")
    probs = 1 / (1 + np.exp(-np.asarray(logits(model, tokenizer, [c[0] for c in calib]))))
    score_map = IsotonicScoreMap().fit(probs.tolist(), [c[1] for c in calib])
    (out / "score_map.json").write_text(json.dumps(score_map.to_dict(), indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/tiny-chain-rm")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--synthetic", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense", type=float, default=0.5, help="weight of the per-token labels")
    p.add_argument("--extra-layers", type=int, default=2, help="new layers on the trunk")
    p.add_argument("--eval-samples", type=int, default=3072, help="held-back samples per file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    report = train(parse_args(argv))
    print(json.dumps(report["auc_held_back"], indent=1))


if __name__ == "__main__":
    main()
