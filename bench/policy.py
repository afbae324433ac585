"""Cost of one policy decision (one wave) at 40 samples drawn, against Adaptive-Consistency.

Goal: a t2 (and an `online`) decision costs ≤ 50 µs at 40 samples. Measured over 200 realistic
vote states
(a leading answer, a runner-up and stragglers), each decided many times; the t2 prior is a
fitted one and its value table is warm (it is rebuilt only when the prior is refitted, which
is timed separately, as is a decision computed from scratch without the table). The online
rule is measured with a prior learned from 400 such questions; its posterior for a vote state
is cached until the next refit, so a warm decision is a lookup (a cold one and a refit are
timed too).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from controller.policy import Caps, LeaderPrior, make_policy
from controller.policy.online import (
    Online,
    fit_share_prior,
    histogram,
    leader_is_mode,
    state_terms,
)
from controller.policy.t2 import LOOKAHEAD, T2, ValueTable, _values

SAMPLES = 40
STATES = 200
REPEAT = 20


def _states(seed: int = 0) -> list[list[str | None]]:
    rng = random.Random(seed)
    out: list[list[str | None]] = []
    for _ in range(STATES):
        share = rng.uniform(0.3, 1.0)
        answers: list[str | None] = []
        for _ in range(SAMPLES):
            r = rng.random()
            answers.append("lead" if r < share else None if r > 0.97 else f"w{rng.randrange(3)}")
        out.append(answers)
    return out


def _per_call(fn: Callable[[], object], calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    states = _states()
    caps = Caps(max_samples=80)
    prior = LeaderPrior(4.2, 1.1)
    results: dict[str, float] = {}
    learned: dict[tuple[int, int, int, int], int] = {}
    for answers in _states(seed=1) + _states(seed=2):
        h = histogram(answers)
        learned[h] = learned.get(h, 0) + 1
    for spec in ("adaptive_consistency", "esc", "margin", "t2", "online"):
        policy = make_policy(spec)
        if isinstance(policy, T2):
            policy.prior = prior
        if isinstance(policy, Online):
            policy.load(learned)
        runs = [policy.start(caps) for _ in states]
        for run, answers in zip(runs, states, strict=True):
            run.decide(answers)  # warm: t2 builds its value table once per prior

        def loop(runs: list[Any] = runs) -> None:
            for _ in range(REPEAT):
                for run, answers in zip(runs, states, strict=True):
                    run.decide(answers)

        results[spec] = _per_call(loop, REPEAT * STATES)
    scratch = _per_call(
        lambda: [_values(prior.a, prior.b, 24, 9, LOOKAHEAD) for _ in range(200)], 200
    )
    build = _per_call(lambda: ValueTable(prior, 64), 1)
    pi = fit_share_prior(learned)

    def uncached() -> None:
        state_terms.cache_clear()  # a vote state met for the first time since start
        for answers in states[:50]:
            leader_is_mode(pi, histogram(answers), 40)

    cold = _per_call(uncached, 50)
    refit = _per_call(lambda: fit_share_prior(learned), 1)
    base = results["adaptive_consistency"]
    print(f"policy decision at {SAMPLES} samples ({STATES} states × {REPEAT}):")
    for spec, secs in results.items():
        print(f"  {spec:22s} {secs * 1e6:7.1f} µs  ({secs / base:.2f}× adaptive_consistency)")
    print(f"  t2 from scratch        {scratch * 1e6:7.1f} µs  ({scratch / base:.2f}×; no table)")
    print(f"  t2 table rebuild (64)  {build * 1e3:7.1f} ms  (once per prior refit)")
    print(f"  online uncached        {cold * 1e6:7.1f} µs  (first sight of a state; cached)")
    print(f"  online refit ({len(learned)} hist.) {refit * 1e3:6.1f} ms  (on its schedule)")
    for spec in ("t2", "online"):
        goal = results[spec] <= 50e-6
        print(f"  goal {spec} ≤ 50 µs: {'met' if goal else 'missed'}")


if __name__ == "__main__":
    main()
