"""The API's protocol: OpenAI request, response and stream-chunk models (pydantic), plus the
`t2` options clients send through `extra_body` and the `t2` summary every answer carries.

Requests: bounds that OpenAI enforces (temperature ≥ 0, max_tokens > 0, n ≥ 1) live here, so a
bad value is a 400 naming the field before any work starts. Input is strict: OpenAI's types
with no coercion (`"10"` is not a number, `"yes"` not a boolean), finite numbers only (NaN and
Infinity are refused), and text that is valid Unicode (a lone surrogate such as `"\ud800"`,
which JSON can carry but UTF-8 cannot, is refused naming its field). Unknown top-level fields
are ignored, as OpenAI's clients send newer options freely; unknown `t2` fields are refused,
since a typo there silently changes what the tenant pays for.

Honest fields: every field OpenAI or vLLM documents is declared here, as supported (it reaches
the engine), refused (it would change what is generated and we cannot do it: 400
`unsupported_parameter` naming it, see `REFUSED_FIELDS`) or ignored (it does not change
generation: `IGNORED_FIELDS`). The README's request-field table lists the same three sets.

Responses are built from these models by the serving layer and serialised as they are, so the
non-streamed body and the streamed chunks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from controller.aggregate.extract import CHAIN_PATTERN
from controller.aggregate.vote import METHODS
from controller.policy.factory import SPEC_PATTERN

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4
MAX_SAMPLES = 1024
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_STOP_TOKEN_IDS = 64
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
# vLLM's range (a torch long); every engine seed is derived from it (server.engine.service)
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Integral]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES), Integral]
SampleCount = Annotated[int, Field(ge=1, le=MAX_SAMPLES), Integral]
Millis = Annotated[int, Field(ge=1, le=3_600_000), Integral]

Text = Annotated[str, AfterValidator(valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(valid_unicode)]
# constraints inside the Annotated, before the validator, so the JSON schema carries them
PolicySpec = Annotated[str, Field(pattern=SPEC_PATTERN), AfterValidator(valid_unicode)]
ExtractorChain = Annotated[str, Field(pattern=CHAIN_PATTERN), AfterValidator(valid_unicode)]
UserId = Annotated[str, Field(max_length=256), AfterValidator(valid_unicode)]
JsonFieldPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,7}$")]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1), Integral]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), Integral]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Bias = Annotated[float, Field(ge=-100, le=100)]
TokenKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
REQUEST_ID_PATTERN = r"^[ -~]{1,256}$"
"""A client's request id: printable ASCII (it goes into logs and the response's id); loose
enough for the ids proxies put in X-Request-Id, which a request cannot choose."""
ClientRequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]


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
    json_field: JsonFieldPath | None = Field(
        default=None,
        description="with response_format json_schema: vote over this (dotted) field",
    )
    deadline_ms: Millis | None = Field(default=None, description="stop drawing waves after this")
    verifier: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        default=None, description="which of the tenant's verifiers scores samples (its name)"
    )


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


MESSAGE_REFUSED_FIELDS: dict[str, tuple[Any, ...]] = {
    "tool_calls": (None, []),
    "function_call": (None,),
    "tool_call_id": (None,),
    "audio": (None,),
    "refusal": (None,),
    "reasoning": (None,),
    "reasoning_content": (None,),
    "tools": (None, []),
    "task": (None,),
}
"""A message's fields that a chat template would render and t2serve does not pass on: refused
unless off (null, as a previous response's message carries them), never dropped unread."""


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: Any = None
    function_call: Any = None
    tool_call_id: Any = None
    audio: Any = None
    refusal: Any = None
    reasoning: Any = None
    reasoning_content: Any = None
    tools: Any = None
    task: Any = None
    annotations: Any = Field(default=None, description="accepted and ignored (output only)")

    @field_validator(*MESSAGE_REFUSED_FIELDS, mode="before")
    @classmethod
    def _refuse(cls, value: Any, info: Any) -> Any:
        return _unsupported(str(info.field_name), value, MESSAGE_REFUSED_FIELDS)

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        """An image, audio or file part gets a 400 that says so, not "must be a string"."""
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise PydanticCustomError(
                        "unsupported_parameter",
                        "content parts of type '{kind}' are not supported by t2serve: its "
                        "models take text parts only",
                        {"kind": ascii(kind[:64])[1:-1]},  # printable whatever it holds
                    )
        return value

    def rendered(self) -> dict[str, str]:
        """What the chat template gets: role, text and, when given, the author's name."""
        out = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


STREAM_REFUSED_FIELDS: dict[str, tuple[Any, ...]] = {"continuous_usage_stats": (None, False)}
"""vLLM's usage on every chunk: t2serve sends usage once, last (`include_usage`)."""


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool | None = None
    continuous_usage_stats: Any = Field(default=None, description="refused unless false")
    include_obfuscation: Any = Field(default=None, description="accepted and ignored")

    @field_validator("continuous_usage_stats", mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        return _unsupported("continuous_usage_stats", value, STREAM_REFUSED_FIELDS)


Stop = NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=MAX_STOP_SEQUENCES)] | None


class JsonSchemaSpec(BaseModel):
    """`response_format.json_schema`: OpenAI's shape (`schema` is the JSON Schema itself)."""

    model_config = ConfigDict(
        extra="ignore", strict=True, allow_inf_nan=False, populate_by_name=True
    )
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: Text | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`."""

    model_config = STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


# Fields that would change what is generated and that t2serve does not do: refused with 400
# `unsupported_parameter` naming the field, unless sent with the value that means "off".
# Why each is refused is in the README's request-field table.
REFUSED_FIELDS: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "prompt_logprobs": (None,),
    "logprob_token_ids": (None,),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "chat_template": (None,),
    "chat_template_kwargs": (None,),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "documents": (None,),
    "return_tokens_as_token_ids": (None, False),
    "thinking_token_budget": (None,),
    "repetition_detection": (None,),
    "vllm_xargs": (None,),
    "kv_transfer_params": (None,),
    "mm_processor_kwargs": (None,),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "add_special_tokens": (None,),
    "return_token_ids": (None, False),
    "watermarking": (None, False),
    "prompt_embeds": (None,),
    "return_prompt_text": (None, False),
    "return_token_offsets": (None, False),
    "media_io_kwargs": (None,),
    "ec_transfer_params": (None,),
    "moderation": (None,),
}
# Fields that do not change what is generated: accepted and ignored (documented).
IGNORED_FIELDS = (
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "session_id",
    "cache_salt",
    "priority",
    "include_reasoning",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "stream_interval",
    "truncation_side",
    "mm_payload",
    "return_mm_kwargs",
    "routed_experts_prompt_start",
)


def _off_values_schema(schema: dict[str, Any]) -> None:
    """The OpenAPI document states what a refused field accepts: only its "off" values."""
    props = schema.get("properties", {})
    for name, offs in REFUSED_FIELDS.items():
        if name in props:
            props[name] = {
                "anyOf": [{"type": "null"} if v is None else {"const": v} for v in offs],
                "description": "not supported by t2serve: 400 unsupported_parameter unless off",
            }


def _unsupported(
    name: str, value: Any, refused: Mapping[str, tuple[Any, ...]] = REFUSED_FIELDS
) -> Any:
    if any(value == off and type(value) is type(off) for off in refused[name]):
        return value
    raise PydanticCustomError(
        "unsupported_parameter",
        "'{name}' is not supported by t2serve (see the README's request-field table)",
        {"name": name},
    )


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(
        extra="ignore", strict=True, allow_inf_nan=False, json_schema_extra=_off_values_schema
    )

    model: Text = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: PositiveInt | None = None
    stop: Stop = None
    seed: Seed | None = None
    n: Choices = Field(default=1, description="number of final answers (samples are internal)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: UserId | None = None
    t2: T2Options | None = None
    # passed through to the engine for every sample of every wave (vLLM's sampling params)
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1), Integral] | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    min_tokens: Annotated[int, Field(ge=0, le=2**31 - 1), Integral] | None = None
    logit_bias: Annotated[dict[TokenKey, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    ignore_eos: bool | None = None
    response_format: ResponseFormat | None = None
    # documented fields t2serve refuses or ignores; declared so the schema names them
    tools: Any = Field(default=None, description="refused: 400 unsupported_parameter")
    tool_choice: Any = Field(default=None, description="refused unless 'none'")
    functions: Any = Field(default=None, description="refused: 400 unsupported_parameter")
    function_call: Any = Field(default=None, description="refused unless 'none'")
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    use_beam_search: Any = None
    length_penalty: Any = None
    allowed_token_ids: Any = None
    bad_words: Any = None
    prompt_logprobs: Any = None
    logprob_token_ids: Any = None
    include_stop_str_in_output: Any = None
    skip_special_tokens: Any = None
    spaces_between_special_tokens: Any = None
    truncate_prompt_tokens: Any = None
    structured_outputs: Any = Field(default=None, description="refused: use response_format")
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    chat_template: Any = None
    chat_template_kwargs: Any = None
    add_generation_prompt: Any = None
    continue_final_message: Any = None
    documents: Any = None
    return_tokens_as_token_ids: Any = None
    thinking_token_budget: Any = None
    repetition_detection: Any = None
    vllm_xargs: Any = None
    kv_transfer_params: Any = None
    mm_processor_kwargs: Any = None
    suffix: Any = None
    best_of: Any = None
    add_special_tokens: Any = None
    return_token_ids: Any = None
    watermarking: Any = None
    prompt_embeds: Any = None
    return_prompt_text: Any = None
    return_token_offsets: Any = None
    media_io_kwargs: Any = None
    ec_transfer_params: Any = None
    moderation: Any = None
    metadata: Any = Field(default=None, description="accepted and ignored")
    store: Any = Field(default=None, description="accepted and ignored")
    service_tier: Any = Field(default=None, description="accepted and ignored")
    parallel_tool_calls: Any = Field(default=None, description="accepted and ignored")
    request_id: ClientRequestId | None = Field(
        default=None,
        description="the response's id is 'chatcmpl-' (chat) or 'cmpl-' + this, as in vLLM; an "
        "X-Request-Id header takes precedence",
    )
    session_id: Any = Field(default=None, description="accepted and ignored")
    cache_salt: Any = Field(default=None, description="accepted and ignored")
    priority: Any = Field(default=None, description="accepted and ignored")
    include_reasoning: Any = Field(default=None, description="accepted and ignored")
    prompt_cache_key: Any = Field(default=None, description="accepted and ignored")
    prompt_cache_retention: Any = Field(default=None, description="accepted and ignored")
    prompt_cache_options: Any = Field(default=None, description="accepted and ignored")
    safety_identifier: Any = Field(default=None, description="accepted and ignored")
    verbosity: Any = None
    stream_interval: Any = Field(default=None, description="accepted and ignored")
    truncation_side: Any = Field(default=None, description="accepted and ignored")
    mm_payload: Any = Field(default=None, description="accepted and ignored")
    return_mm_kwargs: Any = Field(default=None, description="accepted and ignored")
    routed_experts_prompt_start: Any = Field(default=None, description="accepted and ignored")

    @field_validator(*REFUSED_FIELDS, mode="before")
    @classmethod
    def _refuse(cls, value: Any, info: Any) -> Any:
        return _unsupported(str(info.field_name), value)

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: Any) -> Any:
        """As OpenAI and vLLM answer it: without `stream: true` there is no stream to shape."""
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives per token the returned sample's logprobs carry (None: none)."""
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    echo: Any = Field(default=None, description="refused (vLLM's chat echo) unless false")

    @field_validator("echo", mode="before")
    @classmethod
    def _refuse_chat_echo(cls, value: Any) -> Any:
        if value is None or value is False:
            return value
        raise PydanticCustomError(
            "unsupported_parameter",
            "'echo' is not supported on chat completions (see the README's request-field table)",
        )

    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: (
        NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_CHOICES)]
    )
    echo: bool = False
    logprobs: TopLogprobs | None = None

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

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
    billed_prompt_tokens: int = Field(
        default=0, description="prompt tokens the engine computed, every wave: what was billed"
    )
    billed_completion_tokens: int = Field(default=0, description="completion tokens billed")
    choices: list[T2Summary] | None = None
    route: RouteSummary | None = None

    @model_serializer(mode="wrap")
    def _drop_empty_choices(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("choices", "route"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    """OpenAI's convention: `prompt_tokens` is the whole prompt (once per answer, as vLLM
    reports it), its prefix-cache hits in `prompt_tokens_details.cached_tokens`; completion
    tokens are every internal sample's. What billing charged is in `t2.billed_*_tokens`.
    `verifier_tokens` (tokens a reward model or judge read and wrote for this answer, billed
    like generation) is ours and is not in `total_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    verifier_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """Chat's `choices[].logprobs`: the returned sample's tokens (OpenAI's shape)."""

    content: list[TokenLogprobEntry] | None
    refusal: list[TokenLogprobEntry] | None = None


class CompletionLogprobs(BaseModel):
    """Text completions' `choices[].logprobs` (OpenAI's legacy shape)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


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
    logprobs: CompletionLogprobs | None = None


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
    logprobs: ChatLogprobs | None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class StreamChunk(BaseModel):
    """One `data:` event of a stream: `chat.completion.chunk` or `text_completion`. The last
    finish chunk carries the `t2` summary and `t2_headers` (a stream cannot set the x-t2-*
    headers at its end, so it repeats them here); then, with `stream_options.include_usage`,
    OpenAI's usage chunk, the only one with no choices. A keep-alive is an empty delta
    carrying `t2_progress`."""

    id: str
    object: Literal["chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[ChatChunkChoice] | list[CompletionChunkChoice]
    usage: Usage | None = None
    t2: T2Summary | None = None
    t2_headers: dict[str, str] | None = None
    t2_progress: str | None = None

    @model_serializer(mode="wrap")
    def _final_fields_only_at_the_end(self, handler: SerializerFunctionWrapHandler) -> Any:
        data: dict[str, Any] = handler(self)
        for key in ("usage", "t2", "t2_headers", "t2_progress"):
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
