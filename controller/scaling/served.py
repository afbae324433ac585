"""Serving curves: what the controller needs to serve one model, fitted from calibration samples.

Per served model, measured on gold-labelled calibration questions sampled K times each:
- N (params), which prices a token at 2·N FLOPs;
- the per-question difficulty Beta (controller.scaling.beta, the `beta` approach of curves.json);
- Acc(k), the majority-vote accuracy with k samples for k = 1..K: the exact expectation over
  uniformly random k-subsets of each question's recorded samples (`maj_curve`), ties broken as
  the server's vote breaks them, averaged over questions;
- the t2 leader prior (controller.policy.prior), fitted from each question's top-two votes.

They live in curves.json's `serving` block, keyed by model id (controller.scaling.curves).
`fit_served` builds one from replay records, `load_served` reads one back for the server.

Calibration and evaluation questions must differ: a prior fitted on the questions a benchmark
then scores would flatter it. `split_calibration` is the documented split of a replay file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from controller.aggregate.extract import Extractor, last_number
from controller.aggregate.running import running_leader
from controller.policy.prior import UNIFORM, LeaderPrior, fit_leader_prior, leader_pair
from controller.replay.data import ReplayQuestion, load_replay
from controller.scaling.beta import BetaFit, fit_beta_binomial_report
from controller.scaling.curves import (
    BetaModel,
    Curves,
    CurvesError,
    DataInfo,
    PriorParams,
    ServingModel,
)
from controller.scaling.estimators import maj_curve

FloatArray = NDArray[np.float64]
LEADER_TABLE_K = 32
"""P(right | k, leader votes) is tabulated up to this k (beyond it, by the leader's share)."""
LEADER_TABLE_ORDERS = 24
"""Random draw orders per calibration question for that table."""
MAX_CURVE_K = 256
"""Acc(k) is measured up to this k at most (t2 never plans beyond `t2.MAX_TABLE` = 256)."""
EVEN_ODD = "even positions of {path} (0, 2, 4, ...); odd positions are held back for evaluation"


class ServedCurvesError(CurvesError):
    """A served model's curves cannot be read; names the model, the file and the field."""


@dataclass(frozen=True)
class ServedFit:
    """One model's fitted serving curves: the Beta (for `models`) and the serving entry."""

    model_id: str
    beta: BetaModel
    serving: ServingModel


@dataclass(frozen=True)
class ServedCurves:
    """A served model's curves, as the controller queries them."""

    model_id: str
    params: float
    tokens: float | None
    beta: BetaFit
    curve: tuple[float, ...]  # Acc(k) for k = 1..len(curve)
    leader_prior: LeaderPrior
    questions: int
    source: str
    leader_table: tuple[tuple[float, ...], ...] = ()

    @property
    def k_max(self) -> int:
        return len(self.curve)

    def accuracy(self, k: float) -> float:
        """Acc(k): measured for integer k <= K, linear between integers, held at Acc(K) beyond.

        Why hold: beyond K the calibration says nothing, majority accuracy flattens as k grows
        (it tends to the share of questions whose plurality answer is right), and a held
        value never promises a gain the data did not show.
        """
        if not (math.isfinite(k) and k >= 1):
            raise ValueError("k must be finite and >= 1")
        if k >= self.k_max:
            return self.curve[-1]
        lo = math.floor(k)
        frac = k - lo
        if frac == 0.0:
            return self.curve[lo - 1]
        return (1.0 - frac) * self.curve[lo - 1] + frac * self.curve[lo]

    def accuracy_given_votes(self, k: int, leader_votes: int) -> float:
        """P(the majority answer is right | k samples drawn, `leader_votes` of them for it),
        measured on the calibration questions; Acc(k) where no table was calibrated."""
        if not self.leader_table or leader_votes < 1 or k < 1:
            return self.accuracy(max(k, 1))
        kt = len(self.leader_table)
        if k > kt:  # beyond the table: the same leader share at the table's largest k
            leader_votes = max(1, round(leader_votes * kt / k))
            k = kt
        return self.leader_table[k - 1][min(leader_votes, k) - 1]

    def accuracy_curve(self, k_max: int) -> FloatArray:
        """[Acc(1), ..., Acc(k_max)]."""
        return np.array([self.accuracy(k) for k in range(1, k_max + 1)], dtype=float)


# ---- fitting -------------------------------------------------------------------------------------


def _answer_counts(q: ReplayQuestion, where: str) -> tuple[int, list[int], int]:
    """(gold votes, other answers' votes, abstentions) of a question's recorded samples."""
    if q.gold is None:
        raise ServedCurvesError(f"{where}:{q.line}: question {q.id!r} has no gold answer")
    votes = Counter(s.answer for s in q.samples if s.answer is not None)
    abstained = sum(1 for s in q.samples if s.answer is None)
    others = [v for a, v in votes.items() if a != q.gold]
    return votes.get(q.gold, 0), others, abstained


def accuracy_curve(questions: Sequence[ReplayQuestion], k_max: int, where: str) -> FloatArray:
    """Mean over questions of the exact maj@k, k = 1..k_max."""
    total = np.zeros(k_max)
    for q in questions:
        gold, others, abstained = _answer_counts(q, where)
        total += maj_curve(gold, others, k_max, abstained=abstained)
    return total / len(questions)


def leader_accuracy_table(
    questions: Sequence[ReplayQuestion],
    curve: Sequence[float],
    k_max: int = LEADER_TABLE_K,
    orders: int = LEADER_TABLE_ORDERS,
    seed: int = 0,
) -> list[list[float]]:
    """table[k-1][v-1] = P(the vote's answer is right | k samples, v of them for it).

    Counted over `orders` seeded random draw orders of every question's samples (the vote as
    controller.aggregate.vote: ties to the answer seen first), each cell shrunk towards Acc(k)
    by one pseudo-question so that rare cells stay sane.
    """
    k_max = min(k_max, len(curve), min(len(q.samples) for q in questions))
    drawn, gold = _drawn_orders(questions, k_max, orders, np.random.default_rng(seed))
    leader, votes = running_leader(drawn)
    led = leader >= 0  # a draw with an answer seen so far
    ks = np.broadcast_to(np.arange(1, k_max + 1), drawn.shape)
    hits = np.zeros((k_max + 1, k_max + 1))
    seen = np.zeros((k_max + 1, k_max + 1))
    np.add.at(seen, (ks[led], votes[led]), 1.0)
    np.add.at(hits, (ks[led], votes[led]), (leader == gold[:, None])[led])
    table = []
    for k in range(1, k_max + 1):
        prior = curve[k - 1]
        table.append([float((hits[k, v] + prior) / (seen[k, v] + 1.0)) for v in range(1, k + 1)])
    return table


def _drawn_orders(
    questions: Sequence[ReplayQuestion], k_max: int, orders: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(drawn, gold): per question and draw order, a row of the first `k_max` answers drawn,
    coded per question (-1: abstained), and the row's gold code (-2 when no sample has it).
    The rng is drawn as one permutation per question and order, in that order, so the
    table's orders stay those of its first, per-draw implementation."""
    drawn, gold = [], []
    for q in questions:
        ids: dict[str, int] = {}
        coded = np.array([-1 if s.answer is None else ids.setdefault(s.answer, len(ids))
                          for s in q.samples])  # fmt: skip
        picks = np.stack([rng.permutation(len(coded))[:k_max] for _ in range(orders)])
        drawn.append(coded[picks])
        gold.append(np.full(orders, ids.get(q.gold, -2) if q.gold is not None else -2))
    return np.concatenate(drawn), np.concatenate(gold)


def leader_pairs(questions: Sequence[ReplayQuestion]) -> Counter[tuple[int, int]]:
    """The (n, c) count table of all questions' votes, as t2 counts finished questions."""
    table: Counter[tuple[int, int]] = Counter()
    for q in questions:
        pair = leader_pair([s.answer for s in q.samples])
        if pair is not None:
            table[pair] += 1
    return table


def calibration_width(counts: Sequence[int]) -> int:
    """K for calibrating on a ragged log: the most samples at least half of its questions have.

    The curves and vote tables need the same K samples per question (`fit_served` takes the
    fewest). A log where a few calls failed would cut every question to those few, down to
    K = 1 for one empty reply; left out instead are the questions with fewer than K."""
    ordered = sorted(counts, reverse=True)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0


def fit_served(
    questions: Sequence[ReplayQuestion],
    *,
    model_id: str,
    params: float,
    tokens: float | None = None,
    calibration: str = "all questions of the file",
    data: DataInfo | None = None,
    where: str = "<data>",
    seed: int = 0,
) -> ServedFit:
    """Fit one model's serving curves from its calibration questions (gold-labelled replays).

    K = the fewest samples any question has (capped at MAX_CURVE_K). The leader prior is
    fitted with the uniform prior as its anchor, as t2 refits online (`fit_leader_prior`).
    """
    if not questions:
        raise ServedCurvesError(f"{where}: no calibration questions for model {model_id!r}")
    if not (math.isfinite(params) and params > 0):
        raise ServedCurvesError(f"model {model_id!r}: params must be a positive number")
    k_max = min(min(len(q.samples) for q in questions), MAX_CURVE_K)
    acc = accuracy_curve(questions, k_max, where)
    n = np.array([len(q.samples) for q in questions], dtype=float)
    c = np.array([sum(s.answer == q.gold for s in q.samples) for q in questions], dtype=float)
    report = fit_beta_binomial_report(n, c, seed=seed)
    prior = fit_leader_prior(leader_pairs(questions), anchor=UNIFORM)
    beta = BetaModel(
        a=report.fit.a,
        b=report.fit.b,
        p_max=report.fit.p_max,
        params=params,
        tokens=tokens,
        n_questions=report.n_questions,
        log_likelihood=report.log_likelihood,
        log_likelihood_plain=report.log_likelihood_plain,
    )
    serving = ServingModel(
        params=params,
        tokens=tokens,
        accuracy=[float(v) for v in acc],
        leader_prior=PriorParams(a=prior.a, b=prior.b),
        questions=len(questions),
        samples=k_max,
        calibration=calibration,
        data=data,
        leader_accuracy=leader_accuracy_table(questions, [float(v) for v in acc], seed=seed),
    )
    return ServedFit(model_id, beta, serving)


def split_calibration(
    questions: Sequence[ReplayQuestion],
) -> tuple[list[ReplayQuestion], list[ReplayQuestion]]:
    """(calibration, evaluation): even positions of the file calibrate, odd ones are held back."""
    return list(questions[0::2]), list(questions[1::2])


def data_info(path: str | Path, rows: int, where: str | None = None) -> DataInfo:
    p = Path(path)
    return DataInfo(path=str(path), sha256=hashlib.sha256(p.read_bytes()).hexdigest(), rows=rows,
                    where=where)  # fmt: skip


def with_served(curves: Curves | None, fit: ServedFit) -> Curves:
    """`curves` (or a new beta document) with `fit`'s model added or replaced."""
    if curves is None:
        return Curves(approach="beta", models={fit.model_id: fit.beta},
                      serving={fit.model_id: fit.serving}, data=fit.serving.data)  # fmt: skip
    models = dict(curves.models or {})
    models[fit.model_id] = fit.beta
    serving = dict(curves.serving or {})
    serving[fit.model_id] = fit.serving
    return curves.model_copy(update={"models": models, "serving": serving})


# ---- loading -------------------------------------------------------------------------------------


def load_served(path: str | Path, model_id: str) -> ServedCurves:
    """The serving curves of `model_id` from a curves.json.

    Raises ServedCurvesError naming the model, the file and the field for a missing file, a
    malformed document, or a file without a serving entry for this model.
    """
    p = Path(path)
    head = f"model {model_id!r}: curves file {p}"
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise ServedCurvesError(f"{head}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServedCurvesError(f"{head}: cannot read it ({exc})") from None
    try:
        curves = Curves.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        raise ServedCurvesError(f"{head}: {where}: {err['msg']}") from None
    serving = (curves.serving or {}).get(model_id)
    if serving is None:
        have = ", ".join(sorted(curves.serving or {})) or "none"
        raise ServedCurvesError(
            f"{head}: serving.{model_id}: missing (serving entries: {have}); "
            f"run `t2serve calibrate --model {model_id}`"
        )
    beta = (curves.models or {})[model_id]  # the document validator guarantees it
    return served_curves(ServedFit(model_id, beta, serving), str(p))


def served_curves(fit: ServedFit, source: str) -> ServedCurves:
    """A fitted entry as the controller queries it (what `load_served` returns for it once
    written): a replay calibrating in memory goes through the same conversion."""
    serving = fit.serving
    return ServedCurves(
        model_id=fit.model_id,
        params=serving.params,
        tokens=serving.tokens,
        beta=fit.beta.fit(),
        curve=tuple(serving.accuracy),
        leader_prior=LeaderPrior(serving.leader_prior.a, serving.leader_prior.b),
        questions=serving.questions,
        source=source,
        leader_table=tuple(tuple(row) for row in serving.leader_accuracy or ()),
    )


def fit_served_replay(
    path: str | Path,
    *,
    model_id: str,
    params: float,
    tokens: float | None = None,
    split: bool = True,
    extractor: Extractor = last_number,
) -> ServedFit:
    """Fit from a replay file: with `split`, its even positions only (`split_calibration`)."""
    questions, _ = load_replay(path, extractor)
    chosen = split_calibration(questions)[0] if split else questions
    how = EVEN_ODD.format(path=path) if split else f"all questions of {path}"
    return fit_served(
        chosen,
        model_id=model_id,
        params=params,
        tokens=tokens,
        calibration=how,
        data=data_info(path, len(chosen), "even positions" if split else None),
        where=str(path),
    )
