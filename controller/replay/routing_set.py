"""Routing sets: several models' recorded samples on the same questions, priced in dollars.

Format (../shared/data/routing/README.md): a folder with `manifest.json` (task, the few-shot
prompt's `prompt_chars`, `tokens_per_char`, and per model, cheapest first, its `file` and
`prompt_per_1m` / `completion_per_1m` prices) and one JSON Lines replay file per model, every
file holding the same ids, question texts and gold in the same order.

A set is priced as the ledger bills a wave (controller.budget.pricing.Pricer): one call's
prompt (few-shot prompt + question) once, plus each sample's completion tokens; tokens are
characters × `tokens_per_char`. Anything that would let a misaligned or unpriced set be scored
is a `RoutingSetError` naming the file and line.

Logs are not always whole: a failed call leaves a question with fewer samples than the rest
(`recorded`; the replay never draws past it), or with none. A question some model has no
sample for cannot be replayed on every model, so it is left out and named (`skipped`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.aggregate.extract import Extractor, get_extractor
from controller.budget.models import ModelPrice, Prices
from controller.budget.pricing import Pricer
from controller.replay.data import (
    DEFAULT_EXTRACTOR,
    ReplayDataError,
    ReplayQuestion,
    load_replay,
)

MANIFEST = "manifest.json"
TOKENS_PER_CHAR = 0.25
"""Tokens per character when a manifest does not say: the routing sets' own convention."""
TASK_EXTRACTORS: dict[str, str] = {"date_understanding": "date"}
"""The answer extractor a task's recorded answers go through when neither the manifest
(`extractor`) nor the caller names one, and it reads at least half of the set's gold answers;
tasks not listed keep the recorded answers."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
ABSTAINED = -1
NOT_RECORDED = -2
"""Answer codes beside the answers' own (0 = gold, 1, 2, … the others in order of first
appearance): a null answer, and a slot past what a ragged log recorded for that question."""


class RoutingSetError(ValueError):
    """A routing set that cannot be scored; the message names the file (and line)."""


@dataclass(frozen=True)
class SetModel:
    """One model of a set: its recorded answers coded per question and its dollar costs."""

    id: str
    file: Path
    price: ModelPrice
    codes: IntArray  # (Q, S): answer code per sample (0 = gold, ABSTAINED, NOT_RECORDED)
    sample_cost: FloatArray  # (Q, S): dollars of each sample's completion (0 if not recorded)
    call_cost: FloatArray  # (Q,): dollars of one call's prompt (few-shot prompt + question)
    recorded: IntArray  # (Q,): samples recorded per question (≤ S; logs may be ragged)

    @property
    def samples(self) -> int:
        """The most samples any question has: the model's cap."""
        return int(self.codes.shape[1])


@dataclass(frozen=True)
class RoutingSet:
    """A set: its questions (ids, gold) and its models, cheapest first (`one_sample_price`)."""

    name: str
    path: Path
    task: str
    extractor: str | None
    ids: tuple[str, ...]
    gold: tuple[str, ...]
    models: tuple[SetModel, ...]
    skipped: tuple[str, ...] = ()  # ids left out: a model recorded no sample there

    @property
    def questions(self) -> int:
        return len(self.ids)

    def model(self, model_id: str) -> SetModel:
        return next(m for m in self.models if m.id == model_id)


def is_routing_set(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def routing_sets(path: Path) -> list[Path]:
    """`path` itself when it is a set, else the sets directly inside it (sorted by name)."""
    if is_routing_set(path):
        return [path]
    if not path.is_dir():
        raise RoutingSetError(f"{path}: not a folder")
    sets = sorted(p for p in path.iterdir() if p.is_dir() and is_routing_set(p))
    if not sets:
        raise RoutingSetError(f"{path}: no {MANIFEST} in it or in its folders")
    return sets


def _number(entry: dict[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RoutingSetError(f"{where}: {key}: missing or not a number")
    if value < 0:
        raise RoutingSetError(f"{where}: {key}: must be >= 0")
    return float(value)


def _read_manifest(path: Path) -> dict[str, Any]:
    where = str(path / MANIFEST)
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8-sig"))  # a BOM is fine
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RoutingSetError(f"{where}: cannot read it ({exc})") from None
    if not isinstance(doc, dict):
        raise RoutingSetError(f"{where}: expected a JSON object")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise RoutingSetError(f"{where}: models: missing or empty")
    for i, entry in enumerate(models):
        here = f"{where}: models.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise RoutingSetError(f"{here}: id: missing")
        if not isinstance(entry.get("file"), str):
            raise RoutingSetError(f"{here} ({entry['id']}): file: missing")
        for key in ("prompt_per_1m", "completion_per_1m"):
            _number(entry, key, f"{here} ({entry['id']})")
        if any(e.get("id") == entry["id"] for e in models[:i] if isinstance(e, dict)):
            raise RoutingSetError(f"{here}: id: {entry['id']!r} is listed twice")
    doc.setdefault("tokens_per_char", TOKENS_PER_CHAR)
    _number(doc, "tokens_per_char", where)
    if doc.get("prompt_chars") is not None:
        _number(doc, "prompt_chars", where)
    return doc


def _extractor(doc: dict[str, Any], override: str | None, where: str) -> str | None:
    name = override or doc.get("extractor") or TASK_EXTRACTORS.get(str(doc.get("task")))
    if name is None:
        return None
    try:
        get_extractor(str(name))
    except ValueError as exc:
        raise RoutingSetError(f"{where}: extractor: {exc}") from None
    return str(name)


def _if_it_reads_gold(name: str, file: Path) -> str | None:
    """The task's default extractor, if it reads at least half of the set's gold answers; else
    None (the recorded answers as they are). A date-understanding set recorded as options
    "(A)"–"(F)", not dates, would otherwise abstain on every answer and score 0 everywhere."""
    reads = get_extractor(name)
    golds = [q.gold for q in _read_lines(file, None)]
    return name if 2 * sum(reads(str(g)) is not None for g in golds) >= len(golds) else None


def one_sample_price(m: SetModel) -> float:
    """Mean dollars of one call drawing one sample: what orders a set's models cheapest first
    (the manifest should list them so; the reference is the dearest whatever it says)."""
    return float(m.call_cost.mean() + m.sample_cost.sum() / max(int(m.recorded.sum()), 1))


def _read_lines(file: Path, extract: Extractor | None) -> list[ReplayQuestion]:
    """The file's questions, read as every replay file is (controller.replay.data); recorded
    answers go through `extract` when the set names one. A set also needs gold and texts."""
    if not file.is_file():
        raise RoutingSetError(f"{file}: model file missing")
    read = extract or get_extractor(DEFAULT_EXTRACTOR)  # a sample recorded without `answer`
    try:
        questions, _ = load_replay(file, read, named=extract is not None, keep_empty=True)
    except ReplayDataError as exc:
        raise RoutingSetError(str(exc)) from None
    for q in questions:
        if q.gold is None:
            raise RoutingSetError(f"{file}:{q.line}: gold: missing")
        if any(s.text is None for s in q.samples):
            raise RoutingSetError(f"{file}:{q.line}: samples: each needs a `text`")
    return questions


def _check_aligned(
    first: Sequence[ReplayQuestion], lines: Sequence[ReplayQuestion], file: Path, ref: Path
) -> None:
    if len(lines) != len(first):
        raise RoutingSetError(
            f"{file}:{min(len(lines), len(first)) + 1}: {len(lines)} questions, {ref.name} "
            f"has {len(first)}"
        )
    for a, b in zip(first, lines, strict=True):
        for field in ("id", "question", "gold"):
            if getattr(a, field) != getattr(b, field):
                raise RoutingSetError(
                    f"{file}:{b.line}: {field} {getattr(b, field)!r:.60} differs from "
                    f"{ref.name}'s {getattr(a, field)!r:.60}"
                )


def load_routing_set(path: Path, extractor: str | None = None) -> RoutingSet:
    """Read and check a set; `extractor` (a name, as a route or tenant names one) overrides
    the manifest's `extractor` and the task's default (TASK_EXTRACTORS)."""
    doc = _read_manifest(path)
    where = str(path / MANIFEST)
    name = _extractor(doc, extractor, where)
    if name is not None and extractor is None and doc.get("extractor") is None:
        name = _if_it_reads_gold(name, path / doc["models"][0]["file"])
    extract = get_extractor(name) if name is not None else None
    per_token = float(doc["tokens_per_char"])
    prompt_chars = float(doc.get("prompt_chars") or 0.0)
    entries: list[dict[str, Any]] = doc["models"]
    prices = Prices(models={e["id"]: ModelPrice(prompt_per_1m=e["prompt_per_1m"],
                                                completion_per_1m=e["completion_per_1m"])
                            for e in entries})  # fmt: skip
    read = [(path / e["file"], _read_lines(path / e["file"], extract)) for e in entries]
    ref_file, first = read[0]
    for file, lines in read[1:]:
        _check_aligned(first, lines, file, ref_file)
    # a question some model recorded nothing for cannot be replayed on every model: left out
    keep = [i for i in range(len(first)) if all(lines[i].samples for _, lines in read)]
    if not keep:
        raise RoutingSetError(f"{path}: no question has samples from every model")
    vocab: list[dict[str, int]] = [{str(first[i].gold): 0} for i in keep]
    models = []
    for entry, (file, lines) in zip(entries, read, strict=True):
        kept = [lines[i] for i in keep]
        width = max(len(line.samples) for line in kept)
        codes = np.full((len(kept), width), NOT_RECORDED, dtype=np.int64)
        chars = np.zeros((len(kept), width))
        for row, line in enumerate(kept):
            for j, sample in enumerate(line.samples):
                answer = sample.answer
                codes[row, j] = (ABSTAINED if answer is None
                                 else vocab[row].setdefault(answer, len(vocab[row])))  # fmt: skip
                chars[row, j] = len(sample.text or "")
        pricer = Pricer(prices, entry["id"])
        sample_cost = chars * per_token * pricer.cost(0, 1).money
        prompts = np.array([prompt_chars + len(line.question or "") for line in kept]) * per_token
        call_cost = np.array([pricer.cost(p, 0).money for p in prompts])
        recorded = np.array([len(line.samples) for line in kept], dtype=np.int64)
        models.append(SetModel(entry["id"], file, prices.models[entry["id"]], codes,
                               sample_cost, call_cost, recorded))  # fmt: skip
    models.sort(key=one_sample_price)  # stable: a manifest in price order keeps its order
    if one_sample_price(models[-1]) <= 0:  # costs are relative to the dearest: nothing to trade
        raise RoutingSetError(
            f"{path / MANIFEST}: every model costs 0 (prompt_per_1m, "
            "completion_per_1m, tokens_per_char): a route trades accuracy for "
            "cost, so at least one model needs a price"
        )
    kept_rows = set(keep)
    skipped = tuple(q.id for i, q in enumerate(first) if i not in kept_rows)
    return RoutingSet(path.name, path, str(doc.get("task", "")), name,
                      _unique([first[i].id for i in keep]),
                      tuple(str(first[i].gold) for i in keep), tuple(models), skipped)  # fmt: skip


def _unique(ids: Sequence[str]) -> tuple[str, ...]:
    """Question ids with a repeat made unique ("q#7", its row): calibration tables are keyed by
    id, so two questions under one id would pool into one. A log may repeat an id (a question
    asked twice); each row is still its own question."""
    seen: set[str] = set()
    out = []
    for row, qid in enumerate(ids):
        out.append(qid if qid not in seen else f"{qid}#{row}")
        seen.add(qid)
    return tuple(out)
