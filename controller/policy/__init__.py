"""Sampling policies: when to stop drawing samples for one question, and budget pacing.

Public interface (the server's request loop and the replay harness run exactly this code):

- `make_policy(spec: str, **overrides) -> Policy` for "fixed:5", "adaptive_consistency[:C]",
  "esc[:w]", "margin[:m]", "t2[:λ | lam=..,value=..,wave=..,upfront,norefit]".
- `Policy.start(caps: Caps, price: ComputePrice | None = None) -> PolicyRun`: one per
  request. `price` (controller.pacing) is the price of compute that budgets or average-budget
  pacing set; each policy converts it explicitly (`Policy.sample_price`, `Policy.pressure`):
  λ for t2, 1 − C for AC, the window for ESC, the lead for margin; fixed:k ignores it.
  `Policy.observe(answers)` after a request lets t2 refit its prior from traffic.
- `PolicyRun.decide(answers: Sequence[str | None]) -> Decision`: answers so far in draw
  order (None = abstained). Decision(stop=True, reason) with reason in STOP_REASONS, or
  Decision(stop=False, wave=w): draw w more. Caps (max_samples, max_cost / cost_per_sample,
  budget_samples) are enforced for every policy.
- `PolicyRun.predicted_accuracy`: posterior probability that the current leader is what
  unlimited sampling would pick (report it as `predicted_accuracy`).
Pacing itself (the controller that moves λ, and a tenant's λ from its windows) is
`controller.pacing`.
"""

from controller.policy.base import STOP_REASONS, Caps, Decision, Policy, PolicyRun, StopReason
from controller.policy.factory import POLICY_NAMES, make_policy
from controller.policy.prior import UNIFORM, LeaderPrior, fit_leader_prior
from controller.policy.rules import AdaptiveConsistency, Esc, Fixed, Margin, beta_confidence
from controller.policy.t2 import T2, leader_probability, majority_curve

__all__ = [
    "POLICY_NAMES",
    "STOP_REASONS",
    "T2",
    "UNIFORM",
    "AdaptiveConsistency",
    "Caps",
    "Decision",
    "Esc",
    "Fixed",
    "LeaderPrior",
    "Margin",
    "Policy",
    "PolicyRun",
    "StopReason",
    "beta_confidence",
    "fit_leader_prior",
    "leader_probability",
    "majority_curve",
    "make_policy",
]
