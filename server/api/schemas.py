"""OpenAI request schemas (pydantic) plus the `t2` options object clients send through `extra_body`.

Bounds that OpenAI enforces (temperature ≥ 0, max_tokens > 0, n ≥ 1) live here, so a bad value is a
400 naming the field before any work starts. Unknown top-level fields are ignored, as OpenAI's
clients send newer options freely; unknown `t2` fields are refused, since a typo there silently
changes what the tenant pays for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4


class T2Options(BaseModel):
    """Per-request controller options; each one only narrows what the tenant's config allows."""

    model_config = ConfigDict(extra="forbid")

    policy: str | None = Field(
        default=None, min_length=1, max_length=64, description="e.g. 't2', 'fixed:5'"
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=1024, description="cap on internal samples per answer"
    )
    max_cost: float | None = Field(
        default=None, gt=0, description="cap on this request's cost, tenant's unit"
    )
    aggregator: str | None = Field(default=None, min_length=1, max_length=64)
    extractor: str | None = Field(default=None, min_length=1, max_length=64)
    deadline_ms: int | None = Field(
        default=None, ge=1, le=3_600_000, description="stop drawing waves after this"
    )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None


class _SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stop: Stop = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    n: int = Field(
        default=1,
        ge=1,
        le=MAX_CHOICES,
        description="number of final answers (samples are internal)",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    t2: T2Options | None = None

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, value: Stop) -> Stop:
        if isinstance(value, list) and any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
    echo: bool = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)
