"""What a flip table could reach on the replay files at best (issue 24), in BENCHMARKS.md.

A flip table stops once P(the running leader is not the final majority | n, v1, v2) ≤ δ. Its
best case is the *perfect* table: counted on every question of the file in every order (in-
sample, with the answers' future known). This bound is what no table learned from traffic can
beat by much. Each file's point is the fewest samples within 0.3 points of majority-of-all on
the δ grid. A table learned online must also draw an exploration slice to the cap (the first
20 questions, then a share ε of the rest); that cost is added per ε. Adaptive-Consistency
(C = 0.95) is replayed on the same orders as the reference for "× AC".

A second bound, the *gold-aware* state table, stops in a state once the accuracy drawing to the
cap adds there (counted with the gold answers, in-sample) is ≤ λ × the samples it would take:
what any rule that stops on (n, v1, v2) could reach if it knew each state's worth. Its λ grid
reaches down to 0.0002, where the cap-10 files are past majority-of-all; on game24 (cap 100)
all but its smallest λ stop at once.

Run: `python -m bench stopping_bounds` (about a minute). Writes var/bench/stopping_bounds.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from controller.aggregate import get_extractor
from controller.policy.base import top_two
from controller.replay import DEFAULT_EXTRACTOR, ReplayQuestion, load_replay, replay
from controller.replay.loo import AC_REFERENCE

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "replay"
ORDERS = 20
DELTAS = (0.2, 0.1, 0.05, 0.03, 0.02, 0.01)
LAMS = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002)
TOLERANCE = 0.003  # within 0.3 points of majority-of-all: issue 24's per-file goal
EXPLORE = (0.05, 0.1)  # exploration shares after the first EXPLORE_FIRST questions
EXPLORE_FIRST = 20

State = tuple[int, int, int]  # (n, v1, v2)
Path_ = list[tuple[State, str | None]]  # a question's states in one order, with the leader


def _paths(question: ReplayQuestion, rng: np.random.Generator) -> list[Path_]:
    answers = [s.answer for s in question.samples]
    out = []
    for _ in range(ORDERS):
        drawn = [answers[i] for i in rng.permutation(len(answers))]
        path: Path_ = []
        for n in range(1, len(drawn) + 1):
            leader, v1, v2 = top_two(drawn[:n])
            path.append(((n, v1, v2), leader))
        out.append(path)
    return out


def _right(question: ReplayQuestion, answer: str | None) -> bool:
    if answer is None:
        return False
    if question.gold is not None:
        return answer == question.gold
    return any(s.answer == answer and s.correct for s in question.samples)


def perfect_table(questions: list[ReplayQuestion]) -> dict[str, Any]:
    """The in-sample flip table's frontier on one file, and its point within TOLERANCE."""
    rng = np.random.default_rng(0)
    paths = [_paths(q, rng) for q in questions]
    seen: dict[State, list[int]] = defaultdict(lambda: [0, 0])
    for per_question in paths:
        for path in per_question:
            final = path[-1][1]
            for state, leader in path:
                seen[state][0] += 1
                seen[state][1] += leader != final
    pairs = list(zip(questions, paths, strict=True))
    majority = float(np.mean([[_right(q, p[-1][1]) for p in ps] for q, ps in pairs]))
    frontier = []
    for delta in DELTAS:
        right = drawn = 0.0
        for question, per_question in pairs:
            for path in per_question:
                for state, leader in path:  # noqa: B007 - the leader where it stops
                    visits, flips = seen[state]
                    if (state[1] > 0 and flips / visits <= delta) or state == path[-1][0]:
                        break
                right += _right(question, leader)
                drawn += state[0]
        k = len(questions) * ORDERS
        frontier.append({"delta": delta, "accuracy": right / k, "samples": drawn / k})
    within = [p for p in frontier if p["accuracy"] >= majority - TOLERANCE]
    best = min(within, key=lambda p: p["samples"])
    return {"majority": majority, "frontier": frontier, "point": best,
            "gold_frontier": _gold_frontier(questions, paths)}  # fmt: skip


def _gold_frontier(questions: list[ReplayQuestion], paths: list[list[Path_]]) -> list[Any]:
    gain: dict[State, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # visits, gain, left
    for question, per_question in zip(questions, paths, strict=True):
        for path in per_question:
            final = _right(question, path[-1][1])
            cap = path[-1][0][0]
            for state, leader in path:
                g = gain[state]
                g[0] += 1
                g[1] += final - _right(question, leader)
                g[2] += cap - state[0]
    frontier = []
    for lam in LAMS:
        right = drawn = 0.0
        for question, per_question in zip(questions, paths, strict=True):
            for path in per_question:
                for state, leader in path:  # noqa: B007 - the leader where it stops
                    _, added, left = gain[state]
                    if (state[1] > 0 and added <= lam * left) or state == path[-1][0]:
                        break
                right += _right(question, leader)
                drawn += state[0]
        k = len(questions) * ORDERS
        frontier.append({"lam": lam, "accuracy": right / k, "samples": drawn / k})
    return frontier


def main() -> None:
    extract = get_extractor(DEFAULT_EXTRACTOR)
    files: dict[str, Any] = {}
    for path in sorted(DATA.glob("*.jsonl")):
        questions, _ = load_replay(path, extract, skip_empty=True)
        bound = perfect_table(questions)
        ac = replay(questions, AC_REFERENCE, perms=ORDERS).mean_samples
        cap = float(np.mean([len(q.samples) for q in questions]))
        n = len(questions)
        point = bound["point"]
        explored = {}
        for eps in EXPLORE:
            share = (EXPLORE_FIRST + eps * (n - EXPLORE_FIRST)) / n
            explored[str(eps)] = (1 - share) * point["samples"] + share * cap
        files[path.stem] = {"questions": n, "ac_samples": ac, "cap": cap, **bound,
                            "with_exploration": explored}  # fmt: skip
        shares = ", ".join(f"{e}: {c / ac:.2f}×" for e, c in explored.items())
        print(f"{path.stem}: {100 * (point['accuracy'] - bound['majority']):+.2f} pt at "
              f"{point['samples']:.2f} ({point['samples'] / ac:.2f}× AC); with exploration "
              f"{shares}", flush=True)  # fmt: skip
    ac_total = sum(f["questions"] * f["ac_samples"] for f in files.values())
    free = sum(f["questions"] * f["point"]["samples"] for f in files.values())
    pooled = {"free": free / ac_total}
    for eps in EXPLORE:
        key = str(eps)
        pooled[key] = sum(f["questions"] * f["with_exploration"][key] for f in files.values())
        pooled[key] /= ac_total
    print("pooled × AC:", {k: round(v, 2) for k, v in pooled.items()}, flush=True)
    out = ROOT / "var" / "bench" / "stopping_bounds.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"files": files, "pooled_vs_ac": pooled}, indent=1))


if __name__ == "__main__":
    main()
