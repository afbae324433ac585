"""Average-budget mode: pacing holds the running mean of samples at B over a long replay."""

import numpy as np
import pytest

from controller.replay import ReplayQuestion, ReplaySample, replay


def synthetic_questions(n: int, samples: int = 24, seed: int = 0) -> list[ReplayQuestion]:
    """Questions whose leading-answer share varies like real traffic (easy to contested)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        share = rng.beta(2.5, 1.2)
        wrong = rng.integers(1, 4)
        answers = [
            "gold" if rng.random() < share else f"w{rng.integers(wrong)}" for _ in range(samples)
        ]
        out.append(
            ReplayQuestion(
                f"q{i}", "gold", tuple(ReplaySample(a, None, 100.0) for a in answers), i + 1
            )
        )
    return out


QUESTIONS = synthetic_questions(1000)


@pytest.mark.parametrize("spec", ["t2", "adaptive_consistency"])
@pytest.mark.parametrize("budget", [3.0, 6.0])
def test_pacing_holds_the_mean_within_5_percent(spec: str, budget: float) -> None:
    result = replay(QUESTIONS, spec, perms=1, avg_samples=budget)
    assert result.mean_samples == pytest.approx(budget, rel=0.05)


def test_paced_t2_beats_fixed_k_at_the_same_mean() -> None:
    paced = replay(QUESTIONS, "t2", perms=1, avg_samples=4.0)
    fixed = replay(QUESTIONS, "fixed:4", perms=1)
    assert paced.accuracy > fixed.accuracy
