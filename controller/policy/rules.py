"""The baseline policies: fixed k, Adaptive-Consistency (Beta rule), ESC (window rule) and
the margin rule (Wald's SPRT for two answers)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.special import betainc

from controller.pacing import ComputePrice
from controller.policy.base import Caps, Decision, Policy, PolicyRun, spec_number, top_two


def beta_confidence(v1: int, v2: int) -> float:
    """Adaptive-Consistency's stopping statistic: 1 − I_0.5(v1 + 1, v2 + 1).

    The posterior probability, under a uniform prior on the leader's share of the top two,
    that the leader beats the runner-up. (1 − I_x(a, b) = I_{1−x}(b, a).)
    """
    return float(betainc(v2 + 1, v1 + 1, 0.5))


class FixedRun(PolicyRun):
    def __init__(self, caps: Caps, k: int) -> None:
        super().__init__(caps)
        self.k = k
        self._confidence: float | None = None

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        _, v1, v2 = top_two(answers)
        self._confidence = beta_confidence(v1, v2) if answers else None
        if len(answers) >= self.k:
            return Decision.halt("fixed")
        return Decision.draw(self.k - len(answers))

    @property
    def predicted_accuracy(self) -> float | None:
        return self._confidence


class Fixed(Policy):
    """Draw exactly k samples in one wave (fewer only if a cap binds)."""

    adaptive = False

    def __init__(self, k: int, label: str | None = None) -> None:
        if k < 1:
            raise ValueError("fixed:k needs k >= 1")
        self.k = k
        self.spec = label or f"fixed:{k}"

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        return FixedRun(caps, self.k)  # k is the contract: no price changes it


class AdaptiveConsistencyRun(PolicyRun):
    def __init__(self, caps: Caps, threshold: float, wave: int) -> None:
        super().__init__(caps)
        self.threshold = threshold
        self.wave = wave
        self._confidence: float | None = None

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        _, v1, v2 = top_two(answers)
        if v1 == 0:
            self._confidence = None
            return Decision.draw(self.wave)
        self._confidence = beta_confidence(v1, v2)
        if self._confidence >= self.threshold:
            return Decision.halt("converged")
        return Decision.draw(self.wave)

    @property
    def predicted_accuracy(self) -> float | None:
        return self._confidence


class AdaptiveConsistency(Policy):
    """Aggarwal et al. 2023: stop once 1 − I_0.5(v1+1, v2+1) ≥ C (C = 0.95 by default).

    Under a price of compute, the pressure m (`Policy.pressure`: the per-sample λ over the
    reference price) scales the allowed doubt: C' = 1 − (1 − C)·m. A budget in cap mode only
    ever gives m ≥ 1, so C' ≤ C: budgets make it stop sooner, never later.
    """

    def __init__(self, threshold: float = 0.95, wave: int = 1) -> None:
        if not 0.5 < threshold < 1.0:
            raise ValueError("adaptive_consistency threshold C must be in (0.5, 1)")
        if wave < 1:
            raise ValueError("wave must be >= 1")
        self.threshold = threshold
        self.wave = wave
        self.spec = f"adaptive_consistency:{spec_number(threshold)}"

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        m = self.pressure(price, caps)
        threshold = self.threshold
        if m != 1.0:
            threshold = min(0.99999, max(0.5, 1.0 - (1.0 - self.threshold) * m))
        return AdaptiveConsistencyRun(caps, threshold, self.wave)


class EscRun(PolicyRun):
    def __init__(self, caps: Caps, window: int) -> None:
        super().__init__(caps)
        self.window = window
        self._confidence: float | None = None

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        n = len(answers)
        _, v1, v2 = top_two(answers)
        self._confidence = beta_confidence(v1, v2) if v1 else None
        if n >= self.window and n % self.window == 0:
            last = answers[n - self.window :]
            if last[0] is not None and all(a == last[0] for a in last):
                return Decision.halt("converged")
        # draw up to the next window boundary (a partial window after a cap/exhaustion)
        return Decision.draw(self.window - n % self.window)

    @property
    def predicted_accuracy(self) -> float | None:
        return self._confidence


class Esc(Policy):
    """Early-stopping self-consistency (Li et al. 2024): windows of w samples; stop at the
    first window whose w answers are unanimous (default w = 5). Abstentions break unanimity.

    Under a price of compute, the pressure m (see AdaptiveConsistency) shrinks the window:
    w' = max(2, round(w / m)); at m = 1 the window is exactly w.
    """

    def __init__(self, window: int = 5) -> None:
        if window < 1:
            raise ValueError("esc window w must be >= 1")
        self.window = window
        self.spec = f"esc:{window}"

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        m = self.pressure(price, caps)
        window = self.window if m == 1.0 else max(2, round(self.window / m))
        return EscRun(caps, window)


class MarginRun(PolicyRun):
    def __init__(self, caps: Caps, margin: float) -> None:
        super().__init__(caps)
        self.margin = margin
        self._confidence: float | None = None

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        _, v1, v2 = top_two(answers)
        self._confidence = beta_confidence(v1, v2) if v1 else None
        if v1 > 0 and v1 - v2 >= self.margin - 1e-9:
            return Decision.halt("converged")
        # the fewest samples that could reach the margin: every one a vote for the leader
        return Decision.draw(max(1, math.ceil(self.margin - (v1 - v2) - 1e-9)))

    @property
    def predicted_accuracy(self) -> float | None:
        return self._confidence


class Margin(Policy):
    """Stop once the leader leads the runner-up by m votes (default 4).

    This is Wald's sequential probability ratio test for two answers: with the pair's votes a
    ±1 random walk, the log-likelihood ratio of "the leader is ahead" against "the runner-up
    is" depends only on v1 − v2, so the SPRT stops at a fixed lead. Unlike
    Adaptive-Consistency, whose required lead grows like √n, a close race stops as soon as
    one answer pulls m ahead. Waves are the fewest draws that could reach the margin.

    Under a price of compute the pressure m_p (`Policy.pressure`) shrinks the margin:
    m' = max(1, m / m_p). m' is real-valued (stop at a lead ≥ m'), so a paced margin moves in
    small steps on average; a cap (m_p ≥ 1) never raises it.
    """

    def __init__(self, margin: float = 4.0) -> None:
        if not (math.isfinite(margin) and margin >= 1):
            raise ValueError("margin m must be >= 1")
        self.margin = float(margin)
        self.spec = f"margin:{spec_number(margin)}"

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        m = self.pressure(price, caps)
        margin = self.margin if m == 1.0 else max(1.0, self.margin / m)
        return MarginRun(caps, margin)
