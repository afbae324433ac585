"""What a team can already do without routing, on the same draw orders and dollars as the
route replay (controller.replay.route): each model alone at k samples, the vote cascade of Yue
et al. (accept the weak model's majority when its share reaches τ, else escalate), the oracle
cascade, and the reference (the dearest model's majority of all its samples).

Vectorised over orders and questions (numpy), so a set's whole grid takes seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controller.aggregate.running import running_leader
from controller.replay.route import Draws
from controller.replay.routing_set import RoutingSet

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Scored:
    """Per question, means over the draw orders: right (0..1) and dollars."""

    correct: FloatArray
    cost: FloatArray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    def interval(self) -> list[float]:
        """A 95% interval of the accuracy over questions (normal approximation)."""
        return mean_interval(self.correct)


def mean_interval(values: FloatArray) -> list[float]:
    half = Z95 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    mean = float(values.mean())
    return [round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)]


@dataclass(frozen=True)
class Votes:
    """One model's votes after each draw: leader code and its votes, (perms, Q, S); its
    cumulative dollars after n draws, call included, (perms, Q, S); the samples recorded per
    question, (Q,): past them a ragged log's draws change nothing."""

    leader: IntArray
    v1: IntArray
    spent: FloatArray
    recorded: IntArray

    @classmethod
    def of(cls, rs: RoutingSet, draws: Draws, model: str) -> Votes:
        """Running counts per draw order and question, not a one-hot cumsum over every draw:
        answer codes are per question, so the count table stays small (the cumsum's peaked at
        4.3 GB with 100 mostly distinct samples per question)."""
        m = rs.model(model)
        codes = draws.codes(rs, model)
        leader, v1 = running_leader(codes.reshape(-1, codes.shape[2]))
        spent = m.call_cost[None, :, None] + np.cumsum(draws.costs(rs, model), axis=2)
        return cls(leader.reshape(codes.shape), v1.reshape(codes.shape), spent, m.recorded)

    def at(self, k: int) -> tuple[IntArray, IntArray, FloatArray]:
        """(leader, its votes, dollars) after k draws (k capped at what was recorded)."""
        k = min(k, self.leader.shape[2])
        return self.leader[:, :, k - 1], self.v1[:, :, k - 1], self.spent[:, :, k - 1]


def _scored(right: NDArray[np.bool_], cost: FloatArray) -> Scored:
    return Scored(right.mean(axis=0).astype(float), cost.mean(axis=0))


def k_grid(samples: int) -> list[int]:
    """1, 2, 4, … and all."""
    ks = [k for k in (2**i for i in range(12)) if k < samples]
    return [*ks, samples]


def single(votes: Votes, k: int) -> Scored:
    leader, _, spent = votes.at(k)
    return _scored(leader == 0, spent)


def vote_cascade(chain: Sequence[Votes], k: int, tau: float, oracle: bool = False) -> Scored:
    """Draw k on each weak model in turn; accept its majority when the leader's share of the
    k draws is ≥ τ (oracle: exactly when it is right); else the last model, all its samples."""
    final = chain[-1]
    shape = final.leader.shape[:2]
    decided = np.zeros(shape, dtype=bool)
    right = np.zeros(shape, dtype=bool)
    cost = np.zeros(shape)
    for votes in chain[:-1]:
        kw = min(k, votes.leader.shape[2])
        leader, v1, spent = votes.at(kw)
        cost += np.where(decided, 0.0, spent)
        drawn = np.minimum(kw, votes.recorded)[None, :]  # the share is of what was drawn
        accept = (leader == 0) if oracle else ((v1 >= tau * drawn) & (v1 > 0))
        take = accept & ~decided
        right |= take & (leader == 0)
        decided |= take
    leader, _, spent = final.at(final.leader.shape[2])
    cost += np.where(decided, 0.0, spent)
    right |= ~decided & (leader == 0)
    return _scored(right, cost)


def chains(models: Sequence[str]) -> list[tuple[str, ...]]:
    """Every chain of two or more models, cheapest first (the set's order)."""
    return [c for n in range(2, len(models) + 1) for c in itertools.combinations(models, n)]


@dataclass(frozen=True)
class Baselines:
    reference: tuple[str, int, Scored]
    single: list[tuple[str, int, Scored]]
    vote_cascade: list[tuple[tuple[str, ...], int, float, Scored]]
    oracle: list[tuple[int, Scored]]


def baselines(rs: RoutingSet, draws: Draws) -> Baselines:
    votes = {m.id: Votes.of(rs, draws, m.id) for m in rs.models}
    dear = rs.models[-1]
    reference = (dear.id, dear.samples, single(votes[dear.id], dear.samples))
    singles = [(m.id, k, single(votes[m.id], k)) for m in rs.models for k in k_grid(m.samples)]
    cascades = []
    for chain in chains([m.id for m in rs.models]):
        weak = max(rs.model(m).samples for m in chain[:-1])
        for k in k_grid(weak):
            for tau in TAUS:
                scored = vote_cascade([votes[m] for m in chain], k, tau)
                cascades.append((chain, k, tau, scored))
    everyone = [votes[m.id] for m in rs.models]
    weak_all = max(m.samples for m in rs.models[:-1]) if len(rs.models) > 1 else 1
    oracle = [(k, vote_cascade(everyone, k, 1.0, oracle=True)) for k in k_grid(weak_all)]
    return Baselines(reference, singles, cascades, oracle)
