"""What one sampling job is asked to produce, and what it produced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.routing import CandidatePlan
from server.engine.base import GenerationOptions, Prompt, TokenLogprob


@dataclass(frozen=True)
class SamplingJob:
    """One final answer to produce: the prompt (tokenized once, context checked once), how to
    sample it and the controller's limits, all resolved before the first wave."""

    request_id: str
    tenant: str
    model: str
    prompt: Prompt
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: list[str]
    seed: int | None
    policy: str
    aggregator: str
    extractor: str
    max_samples: int
    max_cost: float | None
    deadline_ms: int | None
    timeout_s: float
    verifier: str | None = None  # the tenant's verifier to use (None: its first)
    options: GenerationOptions = field(default_factory=GenerationOptions)  # pass-through fields
    json_field: str | None = None  # the `json_field` extractor's field, when it is used

    @property
    def prompt_tokens(self) -> int:
        return self.prompt.tokens


@dataclass(frozen=True)
class RoutedJob:
    """A request for a route: one job per candidate model, each resolved against that
    model's engine (its tokenizer and context), so any of them can draw the next wave."""

    route: str
    jobs: Mapping[str, SamplingJob]
    cheapest_first: bool = False


@dataclass
class RouteReport:
    """How a routed request went: who answered, at what λ, each candidate's predictions (in
    the route's cost unit) and the waves as (model, samples)."""

    route: str
    model: str
    lam: float
    cost_unit: str
    candidates: list[CandidatePlan]
    waves: list[tuple[str, int]]


@dataclass
class WaveTally:
    """Tokens one wave cost, as the engine reported them: prompt tokens it actually computed
    (prefix-cache hits excluded) and every completion token generated, aborted samples' too."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Spend:
    """What one request's run has spent so far: the single place the loop's accounting is
    written (waves settled, tokens billed, costs), so `usage`, `t2.cost` and the ledger agree.
    `Outcome` is built from it once, when the run ends."""

    unit: str = "tokens"
    waves: int = 0
    cost: float = 0.0
    prompt_tokens: int = 0  # what billing charged: computed prompt tokens, every wave
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # what wave 1 found in the prefix cache (OpenAI's `cached`)
    verifier_tokens: int = 0
    verifier_cost: float = 0.0  # included in `cost`
    notes: list[str] = field(default_factory=list)  # billing trouble the client must hear of

    def add_wave(self, tally: WaveTally) -> None:
        self.prompt_tokens += tally.prompt_tokens
        self.completion_tokens += tally.completion_tokens

    def add_cost(self, cost: float, *, verifier: bool = False) -> None:
        self.cost += cost
        if verifier:
            self.verifier_cost += cost


@dataclass(frozen=True)
class Outcome:
    """What one job produced, built once when its run ends; the response's `usage` and `t2`
    are read straight from it."""

    text: str = ""
    finish_reason: str = "stop"
    answer: str | None = None
    samples: int = 0
    waves: int = 0
    votes: dict[str, int] = field(default_factory=dict)  # keyed by answer
    agreement: float | None = None
    predicted_accuracy: float | None = None
    cost: float = 0.0
    stop_reason: str = ""
    policy: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chosen_index: int | None = None
    price_of_compute: float | None = None
    cost_unit: str = "tokens"
    aggregator: str = ""
    note: str | None = None
    model: str = ""  # the model that answered (a route's last candidate that drew samples)
    route: RouteReport | None = None
    verifier: str | None = None
    verifier_tokens: int = 0  # tokens the verifier's model read and wrote (billed)
    verifier_cost: float = 0.0  # included in `cost`
    # `prompt_tokens` above is what billing charged (computed, prefix-cache hits excluded, every
    # wave); these are what OpenAI's `usage` reports: the prompt once, and what wave 1 found cached
    prompt_length: int = 0
    cached_prompt_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None  # the returned sample's, when asked
