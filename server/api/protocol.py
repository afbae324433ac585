"""The API's protocol: OpenAI request, response and stream-chunk models (pydantic), plus the
`t2` options clients send through `extra_body` and the `t2` summary every answer carries.

Requests: bounds that OpenAI enforces (temperature ≥ 0, max_tokens > 0, n ≥ 1) live here, so a
bad value is a 400 naming the field before any work starts. Input is strict: OpenAI's types
with no coercion (`"10"` is not a number, `"yes"` not a boolean), finite numbers only (NaN and
Infinity are refused), and text that is valid Unicode (a lone surrogate such as `"\ud800"`,
which JSON can carry but UTF-8 cannot, is refused naming its field). Unknown top-level fields
are ignored, as OpenAI's clients send newer options freely; unknown `t2` fields are refused,
since a typo there silently changes what the tenant pays for.

Responses are built from these models by the serving layer and serialised as they are, so the
non-streamed body and the streamed chunks cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from controller.aggregate.extract import CHAIN_PATTERN
from controller.aggregate.vote import METHODS
from controller.policy.factory import SPEC_PATTERN

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4
MAX_SAMPLES = 1024
STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


def valid_unicode(text: str) -> str:
    """Refuse text that UTF-8 cannot encode (lone surrogates): no tokenizer can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"must be valid Unicode; it has a lone surrogate at position {exc.start}"
        ) from None
    return text


def _integral(value: Any) -> Any:
    """JSON's integers include 3.0 (JSON Schema says so too); 3.5 and "3" stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Integer fields: JSON's 3.0 accepted as 3, nothing else; bounds before the validator, so the
# OpenAPI schema states them.
Integral = BeforeValidator(_integral)
PositiveInt = Annotated[int, Field(gt=0), Integral]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1), Integral]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES), Integral]
SampleCount = Annotated[int, Field(ge=1, le=MAX_SAMPLES), Integral]
Millis = Annotated[int, Field(ge=1, le=3_600_000), Integral]

Text = Annotated[str, AfterValidator(valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(valid_unicode)]
# constraints inside the Annotated, before the validator, so the JSON schema carries them
PolicySpec = Annotated[str, Field(pattern=SPEC_PATTERN), AfterValidator(valid_unicode)]
ExtractorChain = Annotated[str, Field(pattern=CHAIN_PATTERN), AfterValidator(valid_unicode)]
UserId = Annotated[str, Field(max_length=256), AfterValidator(valid_unicode)]


class T2Options(BaseModel):
    """Per-request controller options; each one only narrows what the tenant's config allows."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    policy: PolicySpec | None = Field(
        default=None,
        description="e.g. 't2', 't2:lam=0.02,first_wave=2', 'fixed:5', 'esc:5', 'margin:4'",
    )
    max_samples: SampleCount | None = Field(
        default=None, description="cap on internal samples per answer"
    )
    max_cost: float | None = Field(
        default=None, gt=0, description="cap on this request's cost, tenant's unit"
    )
    aggregator: Literal[METHODS] | None = None  # type: ignore[valid-type]
    extractor: ExtractorChain | None = None
    deadline_ms: Millis | None = Field(
        default=None, description="stop drawing waves after this"
    )
    verifier: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        default=None, description="which of the tenant's verifiers scores samples (its name)"
    )


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool | None = None


Stop = NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=MAX_STOP_SEQUENCES)] | None


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = STRICT

    model: Text = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: PositiveInt | None = None
    stop: Stop = None
    seed: Seed | None = None
    n: Choices = Field(
        default=1, description="number of final answers (samples are internal)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: UserId | None = None
    t2: T2Options | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: NonEmptyText | Annotated[
        list[NonEmptyText], Field(min_length=1, max_length=MAX_CHOICES)
    ]
    echo: bool = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# -- responses ------------------------------------------------------------------------------


class RouteCandidateSummary(BaseModel):
    """What the route predicted for starting on one candidate (then acting best once more)."""

    model: str
    first_wave: int
    predicted_accuracy: float
    predicted_cost: float


class RouteWave(BaseModel):
    model: str
    samples: int


class RouteSummary(BaseModel):
    """`t2.route`: how a route (a model id such as `auto`) answered: the model that answered,
    whether the question moved from the first choice, λ per unit of `cost_unit`, each
    candidate's predictions and the waves drawn."""

    route: str
    model: str
    escalated: bool
    price_of_compute: float
    cost_unit: str
    candidates: list[RouteCandidateSummary]
    waves: list[RouteWave]


class T2Summary(BaseModel):
    """The response's `t2` object: how the controller answered (per choice when n > 1)."""

    samples: int
    waves: int
    votes: dict[str, int]
    agreement: float | None
    predicted_accuracy: float | None
    cost: float
    stop_reason: str
    policy: str
    answer: str | None
    price_of_compute: float | None
    aggregator: str
    note: str | None
    verifier: str | None = None
    verifier_tokens: int = 0
    verifier_cost: float = 0.0
    choices: list[T2Summary] | None = None
    route: RouteSummary | None = None

    @model_serializer(mode="wrap")
    def _drop_empty_choices(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("choices", "route"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Usage(BaseModel):
    """OpenAI's usage; `verifier_tokens` (tokens a reward model or judge read and wrote for
    this answer, billed like generation) is ours and is not in `total_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    verifier_tokens: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    t2: T2Summary


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    t2: T2Summary


# -- stream chunks ----------------------------------------------------------------------------


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class StreamChunk(BaseModel):
    """One `data:` event of a stream: `chat.completion.chunk` or `text_completion`. The last
    one has no choices and carries `usage`, `t2` and `t2_headers` (a stream cannot set the
    x-t2-* headers at its end, so it repeats them here)."""

    id: str
    object: Literal["chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[ChatChunkChoice] | list[CompletionChunkChoice]
    usage: Usage | None = None
    t2: T2Summary | None = None
    t2_headers: dict[str, str] | None = None

    @model_serializer(mode="wrap")
    def _final_fields_only_at_the_end(self, handler: SerializerFunctionWrapHandler) -> Any:
        data: dict[str, Any] = handler(self)
        for key in ("usage", "t2", "t2_headers"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


# -- models -----------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body: OpenAI's error shape."""

    error: ErrorDetail
