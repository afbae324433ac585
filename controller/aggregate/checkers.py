"""Programmatic checkers a tenant can name (`kind: checker`, `checker: <name>`).

`chain_steps` checks a worked arithmetic chain step by step: "Q: 7+8-9+4=?" answered
"7+8=15;15-9=6;6+4=10;A: 10". The score is the share of checks that pass, so one slip costs
less than garbage but a fully right chain, and only that, scores 1.0:
- every step's arithmetic (`15-9=6`);
- the chain: each step starts from the previous step's result, the first from the question's
  first operand;
- the question: step i applies the question's i-th operator to its (i+1)-th operand, and
  there are as many steps as operators;
- the final `A:` equals the last step's result.
Pure logic, no I/O: it runs inline in the request.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from controller.aggregate.verify import Checker, arithmetic_checker

_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_FINAL = re.compile(r"A:\s*(-?\d+)\s*$")
_QUESTION = re.compile(r"Q:\s*(-?\d+(?:\s*[+\-*]\s*\d+)+)\s*=\s*\?")
_TERM = re.compile(r"([+\-*])\s*(\d+)")


def _apply(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y if op == "-" else x * y


def question_terms(question: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(first operand, [(operator, operand), ...]) of the last "Q: ...=?" in the question."""
    found = _QUESTION.findall(question)
    if not found:
        return None
    expr = found[-1]
    first = int(re.match(r"\s*(-?\d+)", expr).group(1))  # type: ignore[union-attr]
    rest = expr[re.match(r"\s*-?\d+", expr).end() :]  # type: ignore[union-attr]
    return first, [(op, int(n)) for op, n in _TERM.findall(rest)]


def chain_steps(question: str, text: str) -> float:
    """Share of the chain's checks that pass (see the module docstring); 0.0 with no steps."""
    body, _, _ = text.partition("A:")
    final = _FINAL.search(text.strip())
    steps = [m for part in body.split(";") if (m := _STEP.match(part))]
    pieces = [p for p in body.split(";") if p.strip()]
    if not steps:
        return 0.0
    passed = checks = 0

    def check(ok: bool) -> None:
        nonlocal passed, checks
        checks += 1
        passed += int(ok)

    check(len(steps) == len(pieces))  # no unreadable step
    results = []
    for m in steps:
        x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        check(_apply(x, op, y) == z)
        results.append((x, op, y, z))
    for prev, cur in itertools.pairwise(results):
        check(cur[0] == prev[3])
    terms = question_terms(question)
    if terms is not None:
        first, ops = terms
        check(len(results) == len(ops))
        check(results[0][0] == first)
        for (_, op, y, _), (want_op, want_y) in zip(results, ops, strict=False):
            check(op == want_op and y == want_y)
    check(final is not None and int(final.group(1)) == results[-1][3])
    return passed / checks


CHECKERS: dict[str, Callable[[], Checker]] = {
    "chain_steps": lambda: chain_steps,
    "game24": arithmetic_checker,
}
"""Checker name → factory (what `kind: checker` may name)."""


def get_checker(name: str) -> Checker:
    try:
        return CHECKERS[name]()
    except KeyError:
        raise ValueError(f"unknown checker {name!r}; choose from {', '.join(CHECKERS)}") from None
