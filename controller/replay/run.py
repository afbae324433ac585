"""Replay a sampling policy over recorded samples: the same Policy objects the server runs.

Each permutation is one simulated stream of traffic: the questions arrive in a seeded
random order, each question's recorded samples are drawn in a seeded random order, and the
policy starts fresh (so t2's online prior and the `online` rule only ever learn from
questions already answered in that stream, as a server would). The learning curve
(`ReplayResult.learning_curve`) is the mean samples over each stream's first N questions.
A policy can draw no more samples than were recorded. The final answer
is the majority vote over drawn samples (earliest first occurrence breaks ties); questions
without gold are scored by the `correct` flag of the sample whose text is returned.

Average-budget mode (`avg_samples=B`): a PacingController per stream sets the policy's
price before each question so the running mean of samples tracks B, and a hard allowance
(unspent budget plus a burst of `burst_questions`·B) keeps it from running away. The
burst must be wide enough for the price to move: a tight cap holds the surplus, and with it
the price, near zero, and the cap rather than the policy then decides where samples go.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from controller.aggregate.vote import Candidate, aggregate
from controller.pacing import ComputePrice, PacingController
from controller.policy.base import Caps, Policy
from controller.policy.factory import make_policy
from controller.replay.data import ReplayQuestion

PolicyFactory = Callable[[], Policy]
LEARNING_POINTS: tuple[int, ...] = (50, 100, 400)
"""Stream prefixes the learning curve reports (samples per question over the first N)."""


@dataclass
class ReplayResult:
    """Accuracy and cost of one policy over a replay file (means over questions × perms)."""

    policy: str
    accuracy: float
    accuracy_ci95: tuple[float, float]
    mean_samples: float
    mean_tokens: float | None
    questions: int
    perms: int
    stop_reasons: dict[str, int] = field(default_factory=dict)
    avg_samples_target: float | None = None
    per_question: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Each question's accuracy over the perms (file order): paired comparisons need it."""
    per_question_samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    per_position_samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Samples drawn at each position of the stream (mean over perms): the learning curve."""

    def scored(self, correct: np.ndarray) -> ReplayResult:
        """This result with its accuracy from `correct` (perms × questions, file order)."""
        per_question = correct.mean(axis=0)
        n_q = per_question.size
        acc = float(per_question.mean())
        half = 1.96 * float(per_question.std(ddof=1)) / math.sqrt(n_q) if n_q > 1 else 0.0
        self.per_question = per_question
        self.accuracy = acc
        self.accuracy_ci95 = (max(0.0, acc - half), min(1.0, acc + half))
        return self

    def learning_curve(self, points: Sequence[int] = LEARNING_POINTS) -> dict[int, float]:
        """Mean samples per question over the first N questions of each stream, for each N
        in `points` that the file has (a policy that learns gets cheaper as N grows)."""
        if self.per_position_samples is None:
            return {}
        by = self.per_position_samples
        return {n: float(by[:n].mean()) for n in points if n <= by.size}

    def to_json(self) -> dict[str, object]:
        return {
            "accuracy": round(self.accuracy, 6),
            "accuracy_ci95": [round(self.accuracy_ci95[0], 6), round(self.accuracy_ci95[1], 6)],
            "mean_samples": round(self.mean_samples, 4),
            "mean_tokens": None if self.mean_tokens is None else round(self.mean_tokens, 2),
            "questions": self.questions,
            "policy": self.policy,
            "perms": self.perms,
            "stop_reasons": dict(self.stop_reasons),
            "avg_samples": self.avg_samples_target,
            "learning_curve": {str(n): round(v, 4) for n, v in self.learning_curve().items()},
        }


@dataclass(frozen=True)
class QuestionOutcome:
    correct: bool
    samples: int
    tokens: float
    reason: str
    answers: tuple[str | None, ...]


def run_question(
    question: ReplayQuestion,
    order: Sequence[int],
    policy: Policy,
    caps: Caps,
    price: ComputePrice | None = None,
) -> QuestionOutcome:
    """Run one question's decision loop over its samples in `order`."""
    run = policy.start(caps, price)
    drawn: list[int] = []
    answers: list[str | None] = []
    reason = "exhausted"
    while True:
        decision = run.decide(answers)
        if decision.stop:
            reason = decision.reason or "converged"
            break
        take = order[len(drawn) : len(drawn) + decision.wave]
        if not take:
            break  # the recording has no more samples
        drawn.extend(take)
        answers.extend(question.samples[i].answer for i in take)
    result = aggregate([Candidate(a) for a in answers])
    if question.gold is not None:
        correct = result.answer is not None and result.answer == question.gold
    else:
        chosen = drawn[result.chosen_index] if result.chosen_index is not None and drawn else None
        correct = bool(chosen is not None and question.samples[chosen].correct)
    known = [s.tokens for s in question.samples if s.tokens is not None]
    fill = sum(known) / len(known) if known else 0.0
    tokens = 0.0
    for i in drawn:
        sample_tokens = question.samples[i].tokens
        tokens += sample_tokens if sample_tokens is not None else fill
    return QuestionOutcome(correct, len(drawn), float(tokens), reason, tuple(answers))


def replay(
    questions: Sequence[ReplayQuestion],
    policy: str | PolicyFactory,
    *,
    perms: int = 20,
    seed: int = 0,
    avg_samples: float | None = None,
    max_samples: int | None = None,
    burst_questions: float = 20.0,
    pacing_horizon: float = 5.0,
    integral_gain: float = 0.2,
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replay `policy` (a spec string or a factory of fresh policies) over `questions`."""
    if perms < 1:
        raise ValueError("perms must be >= 1")
    if avg_samples is not None and not avg_samples >= 1:
        raise ValueError("avg_samples must be >= 1")
    factory: PolicyFactory = (lambda: make_policy(policy)) if isinstance(policy, str) else policy
    name = label or factory().spec
    n_q = len(questions)
    correct = np.zeros((perms, n_q))
    samples = np.zeros((perms, n_q))
    by_position = np.zeros((perms, n_q))
    tokens = np.zeros((perms, n_q))
    reasons: Counter[str] = Counter()
    has_tokens = any(s.tokens is not None for q in questions for s in q.samples)
    for perm in range(perms):
        rng = np.random.default_rng([seed, perm])
        pol = factory()
        if avg_samples is not None and not pol.adaptive:
            raise ValueError(f"{pol.spec} is not adaptive: it has no price for --avg-samples")
        pacer = (
            PacingController(
                avg_samples,
                pol.own_sample_price or 1e-4,
                horizon=pacing_horizon,
                integral_gain=integral_gain,
            )
            if avg_samples is not None
            else None
        )
        for position, qi in enumerate(rng.permutation(n_q)):
            question = questions[qi]
            n_rec = len(question.samples)
            cap = n_rec if max_samples is None else min(n_rec, max_samples)
            budget = None
            price = None
            if pacer is not None:
                price = ComputePrice(pacer.price, mode="spend")  # per sample: steer to B
                budget = max(1, math.floor(pacer.headroom(1.0, burst_questions * pacer.target)))
            caps = Caps(max_samples=cap, budget_samples=budget)
            outcome = run_question(question, rng.permutation(n_rec).tolist(), pol, caps, price)
            pol.observe(outcome.answers)
            if pacer is not None:
                pacer.record(outcome.samples)
            correct[perm, qi] = outcome.correct
            samples[perm, qi] = outcome.samples
            by_position[perm, position] = outcome.samples
            tokens[perm, qi] = outcome.tokens
            reasons[outcome.reason] += 1
        if progress is not None:
            progress(perm + 1)
    return ReplayResult(
        policy=name,
        accuracy=0.0,
        accuracy_ci95=(0.0, 0.0),
        mean_samples=float(samples.mean()),
        mean_tokens=float(tokens.mean()) if has_tokens else None,
        questions=n_q,
        perms=perms,
        stop_reasons=dict(reasons),
        avg_samples_target=avg_samples,
        per_question_samples=samples.mean(axis=0),
        per_position_samples=by_position.mean(axis=0),
    ).scored(correct)


ALL_POLICIES: tuple[str, ...] = (
    "fixed:1",
    "fixed:2",
    "fixed:4",
    "fixed:8",
    "fixed:16",
    "fixed:all",
    "adaptive_consistency",
    "esc",
    "margin",
    "t2",
    "online",
)
"""What `--policy all` compares."""

SWEEPS: dict[str, tuple[str, ...]] = {
    "fixed": ("fixed:1", "fixed:2", "fixed:4", "fixed:8", "fixed:16", "fixed:all"),
    "adaptive_consistency": tuple(
        f"adaptive_consistency:{c}" for c in (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
    ),
    "esc": tuple(f"esc:{w}" for w in (2, 3, 4, 5, 6, 8)),
    "margin": tuple(f"margin:{m}" for m in (1, 2, 3, 4, 5, 6, 8)),
    "t2": tuple(f"t2:{lam}" for lam in (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005)),
    "online": tuple(f"online:{tau}" for tau in (0.04, 0.02, 0.01, 0.005, 0.0025)),
}
"""Settings traced for one curve per policy family in `--plot`."""


def family(spec: str) -> str:
    """The policy family of a spec ("esc:5" → "esc")."""
    name = spec.split(":", 1)[0].strip().lower()
    return {"ac": "adaptive_consistency", "adaptive": "adaptive_consistency"}.get(name, name)
