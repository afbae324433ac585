"""Verifiers: score candidate samples for weighted voting or best-of-N.

The protocol lives here so the controller can depend on it without any I/O; the verifiers
that talk to the outside (HTTP, a vLLM reward model) live in `server/verifiers.py`.
Programmatic checkers (a function of question and candidate text) are plain Python and live
here. `score_candidates` turns any verifier failure into `VerifyOutcome.error`, which the
caller passes to `aggregate(..., verifier_error=...)` so the request degrades to voting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.aggregate.extract import Extractor
from controller.aggregate.normalize import normalize_answer


@runtime_checkable
class Verifier(Protocol):
    """Scores candidates for one question; higher is better, one score per candidate."""

    name: str

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class VerifyOutcome:
    """Scores (one per candidate) or the reason there are none."""

    scores: list[float] | None
    error: str | None = None


async def score_candidates(
    verifier: Verifier, question: str, candidates: Sequence[str], timeout_s: float | None = None
) -> VerifyOutcome:
    """Run `verifier`, turning exceptions, timeouts and wrong-length replies into an error."""
    try:
        if timeout_s is None:
            scores = await verifier.score(question, candidates)
        else:
            scores = await asyncio.wait_for(verifier.score(question, candidates), timeout_s)
    except TimeoutError:
        return VerifyOutcome(None, f"{verifier.name}: timed out after {timeout_s:g}s")
    except Exception as exc:  # any verifier failure degrades to voting
        return VerifyOutcome(None, f"{verifier.name}: {type(exc).__name__}: {exc}")
    if len(scores) != len(candidates):
        return VerifyOutcome(
            None, f"{verifier.name}: returned {len(scores)} scores for {len(candidates)} samples"
        )
    try:
        floats = [float(s) for s in scores]
    except (TypeError, ValueError):
        return VerifyOutcome(None, f"{verifier.name}: non-numeric score")
    if any(s != s for s in floats):  # NaN
        return VerifyOutcome(None, f"{verifier.name}: NaN score")
    return VerifyOutcome(floats)


Checker = Callable[[str, str], float]
"""(question, candidate text) → score; a programmatic checker."""


class ProgrammaticVerifier:
    """Wrap a plain checker function as a Verifier (no I/O, runs inline)."""

    def __init__(self, name: str, checker: Checker) -> None:
        self.name = name
        self._checker = checker

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return [float(self._checker(question, text)) for text in candidates]


def answer_matches(expected: str, extractor: Extractor) -> Checker:
    """A checker that scores 1.0 when the extracted answer equals `expected` (normalised)."""
    target = normalize_answer(expected)

    def check(_question: str, text: str) -> float:
        return 1.0 if target is not None and extractor(text) == target else 0.0

    return check


def _safe_eval(expr: str) -> float | None:
    """Evaluate + - * / and parentheses over numbers only (no names, no calls)."""
    if not re.fullmatch(r"[\d\s+\-*/().]+", expr) or "**" in expr or "//" in expr:
        return None
    try:
        value = eval(expr, {"__builtins__": {}}, {})  # restricted to arithmetic by the regex
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None


def arithmetic_checker(target: float = 24.0, tolerance: float = 1e-6) -> Checker:
    """Checks "expr = target" answers (Game of 24 style): the left side must evaluate to target.

    The numbers used are checked against the question's numbers when the question lists them.
    """

    def check(question: str, text: str) -> float:
        m = re.findall(r"(?:Answer:)?\s*([\d\s+\-*/().]+)=\s*([\d.]+)\s*$", text.strip(), re.M)
        if not m:
            return 0.0
        expr = m[-1][0]
        value = _safe_eval(expr)
        if value is None or abs(value - target) > tolerance:
            return 0.0
        wanted = sorted(re.findall(r"\d+", question))
        used = sorted(re.findall(r"\d+", expr))
        if wanted and used != wanted:
            return 0.0
        return 1.0

    return check
