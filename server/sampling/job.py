"""What one sampling job is asked to produce, and what it produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine.base import Prompt


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

    @property
    def prompt_tokens(self) -> int:
        return self.prompt.tokens


@dataclass
class WaveTally:
    """Tokens one wave cost, as the engine reported them: prompt tokens it actually computed
    (prefix-cache hits excluded) and every completion token generated, aborted samples' too."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Outcome:
    """What one job produced; the response's `usage` and `t2` are read straight from it."""

    text: str = ""
    finish_reason: str = "stop"
    answer: str | None = None
    samples: int = 0
    waves: int = 0
    votes: dict[str, int] = field(default_factory=dict)
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
    verifier: str | None = None
    verifier_tokens: int = 0  # tokens the verifier's model read and wrote (billed)
    verifier_cost: float = 0.0  # included in `cost`
    verifier_billed_prompt: int = 0
    verifier_billed_completion: int = 0
