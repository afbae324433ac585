"""Combine k samples into one answer: majority, weighted votes, or best-of-N by verifier.

Every method is deterministic: ties go to the answer that occurred first in draw order, so
a replay and the server give the same answer for the same samples. A method that needs
verifier scores falls back to a plain majority vote when any score is missing (the verifier
failed) and says so in `degraded`/`note` rather than failing the request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Method = Literal["majority", "logprob", "verifier", "best_of_n", "vote_score"]
METHODS: tuple[str, ...] = ("majority", "logprob", "verifier", "best_of_n", "vote_score")
VERIFIED: tuple[str, ...] = ("verifier", "best_of_n", "vote_score")
"""The methods that need a verifier's scores (they fall back to majority without them)."""


def check_method(name: str) -> str:
    """`name` if it is an aggregation method, else a ValueError listing them."""
    if name not in METHODS:
        raise ValueError(f"unknown aggregator {name!r}; choose from {', '.join(METHODS)}")
    return name


@dataclass(frozen=True)
class Candidate:
    """One sample as the aggregator sees it.

    answer: the normalised extracted answer, None when the sample abstains.
    logprob: mean token log-probability of the sample, when the engine reported it.
    score: verifier score (higher = better), None when not scored or the verifier failed.
    """

    answer: str | None
    logprob: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class AggregateResult:
    """The chosen answer and how it was chosen.

    votes: answer → count of samples that gave it (abstentions excluded), in first-seen order.
    agreement: the chosen answer's count / samples_used (abstentions count as disagreement).
    chosen_index: the sample whose text is returned (None only when there were no samples).
    degraded: True when a verifier-based method fell back to majority; `note` says why.
    """

    answer: str | None
    votes: dict[str, int]
    agreement: float
    samples_used: int
    chosen_index: int | None
    method: str
    degraded: bool = False
    note: str | None = None
    weights: dict[str, float] = field(default_factory=dict)


def count_votes(answers: Sequence[str | None]) -> dict[str, int]:
    """answer → count, keys in order of first occurrence (dicts keep insertion order)."""
    votes: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            votes[answer] = votes.get(answer, 0) + 1
    return votes


def leader(weights: dict[str, float] | dict[str, int]) -> str | None:
    """The heaviest key; ties go to the earliest-inserted key (first occurrence)."""
    best: str | None = None
    best_weight = -math.inf
    for answer, weight in weights.items():
        if weight > best_weight:
            best, best_weight = answer, weight
    return best


def _first_index(candidates: Sequence[Candidate], answer: str | None) -> int | None:
    for i, cand in enumerate(candidates):
        if cand.answer == answer:
            return i
    return 0 if candidates else None


def aggregate(
    candidates: Sequence[Candidate],
    method: str = "majority",
    *,
    verifier_error: str | None = None,
) -> AggregateResult:
    """Aggregate candidates with `method` (see METHODS).

    majority: most votes, earliest first occurrence breaks ties.
    logprob: votes weighted by exp(mean token logprob); missing logprobs weigh as the mean
        weight of the others (so a partial report does not silently drop samples).
    verifier: votes weighted by verifier score (scores must be >= 0, e.g. probabilities).
    best_of_n: the single highest-scoring sample (earliest on ties).
    vote_score: votes and scores combined: an answer weighs its vote count times the best
        score among its samples (a well-supported answer needs one convincing sample; a
        lone high-scoring sample needs support).
    With scores present, every method returns the text of the best-scored sample among those
    carrying the chosen answer (a majority vote's winner may be carried by a broken chain).
    verifier_error: set by the caller when the verifier call failed; forces the fallback.
    """
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; choose from {', '.join(METHODS)}")
    votes = count_votes([c.answer for c in candidates])
    n = len(candidates)
    method_used, note = _method_used(candidates, method, verifier_error)
    chosen_index: int | None
    if method_used == "best_of_n":
        answer, chosen_index, weights = _best_of_n(candidates, votes)
    else:
        weights = _vote_weights(candidates, votes, method_used)
        answer = leader(weights)
        chosen_index = chosen_for(candidates, answer, method_used)
    agreement = votes.get(answer, 0) / n if (answer is not None and n) else 0.0
    return AggregateResult(
        answer=answer,
        votes=votes,
        agreement=agreement,
        samples_used=n,
        chosen_index=chosen_index,
        method=method_used,
        degraded=note is not None,
        note=note,
        weights=weights,
    )


def _method_used(
    candidates: Sequence[Candidate], method: str, verifier_error: str | None
) -> tuple[str, str | None]:
    """The method that decides and, when a verifier method fell back to a majority vote, why
    (the verifier failed, or left an answered sample unscored)."""
    if method not in VERIFIED:
        return method, None
    missing = sum(1 for c in candidates if c.answer is not None and c.score is None)
    if verifier_error is None and not missing:
        return method, None
    reason = verifier_error or f"no verifier score for {missing} of {len(candidates)} samples"
    return "majority", f"verifier failed ({reason}); fell back to majority vote"


def _best_of_n(
    candidates: Sequence[Candidate], votes: dict[str, int]
) -> tuple[str | None, int | None, dict[str, float]]:
    """The single highest-scored answered sample (earliest on ties): its answer, its index,
    and each answer's best score as its weight."""
    best_i: int | None = None
    for i, cand in enumerate(candidates):
        if cand.answer is None or cand.score is None:
            continue
        if best_i is None or cand.score > (candidates[best_i].score or -math.inf):
            best_i = i
    answer = candidates[best_i].answer if best_i is not None else None
    chosen_index = best_i if best_i is not None else (0 if candidates else None)
    weights = {a: max((c.score or 0.0) for c in candidates if c.answer == a) for a in votes}
    return answer, chosen_index, weights


def _vote_weights(
    candidates: Sequence[Candidate], votes: dict[str, int], method: str
) -> dict[str, float]:
    """Each answer's weight under a voting method (majority, logprob, vote_score, verifier)."""
    weights: dict[str, float] = {}
    if method == "majority":
        weights = {a: float(v) for a, v in votes.items()}
    elif method == "logprob":
        known = [math.exp(c.logprob) for c in candidates if c.logprob is not None]
        fill = sum(known) / len(known) if known else 1.0
        for c in candidates:
            if c.answer is not None:
                w = math.exp(c.logprob) if c.logprob is not None else fill
                weights[c.answer] = weights.get(c.answer, 0.0) + w
    elif method == "vote_score":
        for a, count in votes.items():
            best = max(max(0.0, c.score or 0.0) for c in candidates if c.answer == a)
            weights[a] = count * best
    else:  # verifier-weighted
        for c in candidates:
            if c.answer is not None:
                weights[c.answer] = weights.get(c.answer, 0.0) + max(0.0, c.score or 0.0)
    return weights


def chosen_for(candidates: Sequence[Candidate], answer: str | None, method: str) -> int | None:
    """Which sample's text to return: the best-supported sample among those with the answer:
    by verifier score wherever the samples were scored, else by logprob for `logprob`, else
    the first."""
    if answer is None:
        return 0 if candidates else None
    carrying = [i for i, c in enumerate(candidates) if c.answer == answer]
    if not carrying:
        return _first_index(candidates, answer)
    if all(candidates[i].score is not None for i in carrying):
        return max(carrying, key=lambda i: (candidates[i].score or 0.0, -i))
    if method == "logprob":
        known = [i for i in carrying if candidates[i].logprob is not None]
        if known:
            return max(known, key=lambda i: (candidates[i].logprob or 0.0, -i))
    return carrying[0]
