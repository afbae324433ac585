"""The sampling loop: for one final answer, ask the policy for a wave, reserve it, draw it from
the engine, settle it, repeat; then aggregate the samples into one answer.

- `SamplingJob`, `Outcome` (`job`): what to produce and what was produced.
- `Sampler` (`loop`): the one sampling loop. It runs a job against a model's `EngineService`
  and a `Billing` handle, or a routed job across a route's models, switching model between
  waves.
- `ModelPlan`, `RoutePlan` (`plans`): which (model, wave) comes next; a single model is the
  trivial route.
- `PolicyBook` (`policies`): long-lived policies per tenant and spec, bounded in memory.
"""

from server.sampling.job import Outcome, RoutedJob, RouteReport, SamplingJob, Spend, WaveTally
from server.sampling.loop import RunListener, Sampler
from server.sampling.plans import ModelPlan, Plan, RoutePlan, Step
from server.sampling.policies import PolicyBook, check_controller_names, samples_named

__all__ = [
    "ModelPlan",
    "Outcome",
    "Plan",
    "PolicyBook",
    "RoutePlan",
    "RouteReport",
    "RoutedJob",
    "RunListener",
    "Sampler",
    "SamplingJob",
    "Spend",
    "Step",
    "WaveTally",
    "check_controller_names",
    "samples_named",
]
