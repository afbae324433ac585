"""Typed engine errors. Each carries the HTTP status and OpenAI-style `code` the server maps it
to (server/api reads `http_status`, `code` and `param`), so the API never guesses from text."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine adapter raises on purpose."""

    http_status: int = 500
    code: str = "engine_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class PromptTooLong(EngineError):
    """The prompt (plus the requested completion) does not fit the model's context."""

    http_status = 400
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and {max_tokens} more were requested.",
            param="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class InvalidSamplingParam(EngineError):
    """A sampling parameter the engine cannot honour (temperature < 0, top_p outside (0, 1], …)."""

    http_status = 400
    code = "invalid_sampling_parameter"


class EngineDead(EngineError):
    """The engine process died or failed; nothing more can be served until it restarts."""

    http_status = 503
    code = "engine_dead"


class UpstreamTimeout(EngineError):
    """A remote upstream did not answer in time."""

    http_status = 504
    code = "upstream_timeout"


class UpstreamError(EngineError):
    """A remote upstream failed: a 5xx answer or no reachable replica after retries."""

    http_status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
