"""The one interface the server samples through, whatever runs the model.

`SampleEngine` is what the sampling loop calls (through `server.engine.service.EngineService`):
draw `n` samples of one prompt under one engine request id (`sample`), stream them back as they
finish, and `abort` the rest when the policy stops, the client leaves or a deadline passes. A
wave of w samples is one request id (the in-process engine sends each sample as its own vLLM
request under it, the remote one a request with n=w); later waves
of the same prompt find its KV blocks in the prefix cache, which `Sample.prompt_tokens_computed`
reports so billing charges only what the engine actually computed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol, TypedDict, Unpack, runtime_checkable

GREEDY_BELOW = 1e-5
"""vLLM decodes greedily below this temperature (its `_SAMPLING_EPS`): every sample is the same."""


def is_greedy(temperature: float | None) -> bool:
    """True when a request at this temperature (None: the default, 1) draws one sample only."""
    return temperature is not None and temperature < GREEDY_BELOW


@dataclass(frozen=True)
class SamplingParams:
    """Engine-neutral sampling parameters for one request (validated by `validate_params`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 32
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # also benchmarks and abort tests: fixed-length samples
    top_k: int = 0  # 0 (or -1): off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    top_logprobs: int | None = None  # None: no per-token logprobs; k: the sampled token's + top k
    structured: StructuredOutput | None = None
    # Each sample's `cumulative_logprob` (logprob votes, yes/no judges): off, the engine
    # computes no logprobs at all and `Sample.cumulative_logprob` is None.
    sample_logprob: bool = False


class ParamOverrides(TypedDict, total=False):
    """What a caller may set over the config's sampling defaults (None: the default). The one
    definition of `SampleEngine.params`'s keywords, for every backend and test double."""

    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: list[str] | tuple[str, ...] | None
    seed: int | None
    ignore_eos: bool


@dataclass(frozen=True)
class StructuredOutput:
    """Constrained decoding: any JSON object (`json_object`) or one matching `json_schema`
    (a JSON Schema, serialised, so the params stay hashable and comparable)."""

    json_object: bool = False
    json_schema: str | None = None


@dataclass(frozen=True)
class GenerationOptions:
    """The request's sampling fields beyond temperature/top_p/max_tokens/stop/seed, carried by
    the job unchanged to every sample of every wave (`EngineService.params` applies them)."""

    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None
    structured: StructuredOutput | None = None
    sample_logprob: bool = False  # set by the job when its aggregator weighs samples by logprob


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A prompt tokenized once (`SampleEngine.tokenize`), with its context already checked by
    the caller; every wave of a request reuses it instead of tokenizing the text again."""

    text: str
    token_ids: tuple[int, ...]
    chat: bool = False
    """A chat template's output: it carries its own special tokens (BOS), so none were added."""

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it honours, so callers never probe it with getattr.

    request_seed: a per-request `SamplingParams.seed` is honoured and reproducible.
    undelivered_usage: `request_usage` reports the tokens of samples aborted part-way.
    structured_outputs: `SamplingParams.structured` (JSON output) is enforced while decoding.
    """

    request_seed: bool = False
    undelivered_usage: bool = False
    structured_outputs: bool = False


@dataclass(frozen=True)
class Sample:
    """One finished sample of one engine request.

    `prompt_tokens` is the prompt's length; `cached_prompt_tokens` how many of them the engine
    served from its prefix cache for this request, so `prompt_tokens_computed` is what it really
    computed. Those three are per engine request: count them once per request (the request's
    last sample carries the final figure), `completion_tokens` once per sample.
    """

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    cumulative_logprob: float | None = None
    request_id: str = ""
    logprobs: tuple[TokenLogprob, ...] | None = None  # only when `top_logprobs` was asked

    @property
    def prompt_tokens_computed(self) -> int:
        return max(0, self.prompt_tokens - self.cached_prompt_tokens)

    @property
    def mean_logprob(self) -> float | None:
        """Per-token log-probability: comparable across samples of different lengths."""
        if self.cumulative_logprob is None or self.completion_tokens == 0:
            return None
        return self.cumulative_logprob / self.completion_tokens


@dataclass
class CacheStats:
    """Prefix-cache totals since the engine started: prompt tokens looked up and found."""

    queries: int = 0
    hits: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class RequestUsage:
    """What one engine request cost (filled in while its samples stream)."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    samples: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def prompt_tokens_computed(self) -> int:
        return max(0, self.prompt_tokens - self.cached_prompt_tokens)


@runtime_checkable
class SampleEngine(Protocol):
    """What every backend provides (in-process vLLM, remote OpenAI-compatible upstreams)."""

    @property
    def ready(self) -> bool:
        """True once the engine can serve (what /readyz reports)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def num_running(self) -> int:
        """Requests the engine is decoding now (for tests and the queue-depth metric)."""
        ...

    @property
    def num_waiting(self) -> int:
        """Requests queued in the engine, not yet scheduled."""
        ...

    @property
    def num_unfinished(self) -> int:
        """Requests this process has sent and not yet seen finish (the queue-depth metric)."""
        ...

    def params(self, **overrides: Unpack[ParamOverrides]) -> SamplingParams:
        """The config's defaults overridden by whatever the caller set (None = default)."""
        ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render chat messages into the model's prompt (with the generation prompt)."""
        ...

    def count_tokens(self, prompt: str) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids are below this (logit_bias and stop_token_ids are checked against it)."""
        ...

    @property
    def max_token_chars(self) -> int:
        """The most characters one token covers: a bound that refuses huge prompts untokenized."""
        ...

    def tokenize(self, prompt: str, *, chat: bool = False) -> Prompt:
        """The prompt as the engine will see it (no context check: the caller does that).
        `chat`: the text is a chat template's output, which holds its own special tokens, so
        the tokenizer adds none (vLLM's chat endpoint does the same; a plain completions prompt
        gets them)."""
        ...

    def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        """Draw n samples of `prompt` under ONE request id; yield each as it finishes.

        A text prompt is tokenized and checked against the context here (PromptTooLong); a
        `Prompt` from `tokenize` is used as it is. Raises InvalidSamplingParam before anything
        runs. Closing the iterator early (break, cancellation) aborts the unfinished samples.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a request's unfinished samples in the engine (idempotent)."""
        ...

    def cache_stats(self) -> CacheStats:
        """Prefix-cache queries and hits, as the engine reports them."""
        ...

    def request_usage(self, request_id: str) -> RequestUsage | None:
        """Tokens a recent engine request cost, aborted part-samples included."""
        ...

    async def shutdown(self) -> None: ...
