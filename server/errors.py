"""Every error the server raises on purpose, in one hierarchy.

Each class carries its HTTP status, OpenAI error `type` and `code`, so the API maps an error by
reading those fields, never by guessing from its text. They are raised anywhere on the serving
path (engine, billing, sampling, serving) and leave as `{"error": {...}}` through
server/api/errors.py. Two errors are not HTTP answers: `ConfigError` (a config that cannot be
used; the admin API maps it to 400 itself) and `VerifierError` (a verifier failure, which only
degrades a request to a vote).
"""

from __future__ import annotations

from typing import Any

# OpenAI's `type` per status, for errors raised without an explicit type.
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "request_cancelled",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An HTTP status plus OpenAI's error fields; `headers` go out with it (Retry-After)."""

    status: int = 500
    code: str | None = None
    type: str = "server_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


ECHO_MAX_CHARS = 64
"""How much of a caller's text an error quotes back: every valid id fits whole (tenant ids and
key labels are at most 64 characters, key prefixes 12)."""


def echoed(text: str) -> str:
    """`text` (an id, a parameter or field name the caller sent) as an error message or `param`
    may quote it: whole up to ECHO_MAX_CHARS, else its start and an ellipsis. A caller who sends
    a 10 kB id does not get 10 kB back, nor write it into every log line of the error."""
    return text if len(text) <= ECHO_MAX_CHARS else text[:ECHO_MAX_CHARS] + "…"


def model_not_found(model: str) -> APIError:
    """404 for a model this server does not serve (or the caller may not use), as OpenAI words
    it; the name quoted is bounded (`echoed`)."""
    return APIError(
        404, f"The model '{echoed(model)}' does not exist.", param="model", code="model_not_found"
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def internal_error() -> APIError:
    """What a client is told of a bug: that it happened and was logged, nothing more."""
    return APIError(500, "The server hit an internal error; it has been logged.")


class ControllerOptionError(APIError):
    """A `t2` policy, aggregator or extractor name the controller does not know."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, message, param=f"t2.{field}", code="invalid_t2_option")
        self.field = field


class InsufficientQuota(APIError):
    """Not even one sample fits the tenant's budget: 429 with Retry-After (window reset)."""

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        window: str | None = None,
        param: str | None = None,
    ) -> None:
        headers = {}
        if retry_after_s is not None:
            headers["Retry-After"] = str(max(1, int(retry_after_s + 0.999)))
        super().__init__(
            429,
            message,
            type="insufficient_quota",
            param=param,
            code="insufficient_quota",
            headers=headers,
        )
        self.retry_after_s = retry_after_s
        self.window = window


class RateLimited(InsufficientQuota):
    """A tenant's or key's `rpm` or `tpm` is used up: 429 as OpenAI answers it, `type`
    "requests" or "tokens" and `code` "rate_limit_exceeded", with Retry-After and the
    x-ratelimit-* headers. A subclass of InsufficientQuota so the sampling loop degrades the same
    way (a later wave refused: answer with the samples drawn)."""

    def __init__(
        self,
        message: str,
        limit: str,
        retry_after_s: float | None,
        headers: dict[str, str],
        param: str | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, window="minute", param=param)
        self.type = limit  # "requests" or "tokens", as OpenAI's rate-limit errors say
        self.code = "rate_limit_exceeded"
        self.limit = limit
        self.headers.update(headers)


class LedgerDown(APIError):
    """The ledger could not be reached to hold a wave: 503 with Retry-After. Before the first
    wave nothing was charged; later, the request ends with what it drew (`ledger_unavailable`).
    The store's own words (hosts, paths) go to the log, not to the tenant."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "The budget ledger could not be reached to hold this request's next wave; nothing "
            "more was charged. Retry shortly.",
            code="ledger_unavailable",
            headers={"Retry-After": "5"},
        )


class StoreDown(APIError):
    """A store (ledger, admin state) could not be reached outside a wave's hold (the admin
    API, for one): 503 with Retry-After; the details go to the log."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "A store this request needs could not be reached. Retry shortly.",
            code="store_unavailable",
            headers={"Retry-After": "5"},
        )


class ClientClosed(APIError):
    """The client went away before the answer was ready (nginx's 499)."""

    def __init__(self) -> None:
        super().__init__(
            499, "The client closed the request.", type="request_cancelled", code="client_closed"
        )


class EngineError(APIError):
    """Base of every error the engine adapter raises on purpose; subclasses set the status."""

    http_status = 500
    default_code = "engine_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(self.http_status, message, param=param, code=self.default_code)


class PromptTooLong(EngineError):
    """The prompt (plus the requested completion) does not fit the model's context."""

    http_status = 400
    default_code = "context_length_exceeded"

    def __init__(
        self, prompt_tokens: int, max_tokens: int, max_model_len: int, param: str = "messages"
    ) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and {max_tokens} more were requested.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class InvalidSamplingParam(EngineError):
    """A sampling parameter the engine cannot honour (temperature < 0, top_p outside (0, 1], …)."""

    http_status = 400
    default_code = "invalid_sampling_parameter"


class EngineNotReady(EngineError):
    """Asked the engine for work before it started (or after it stopped): retry shortly."""

    http_status = 503
    default_code = "engine_not_ready"

    def __init__(self, message: str = "The engine is not ready yet; retry shortly.") -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "5"


class EngineDead(EngineError):
    """The engine process died or failed; nothing more can be served until it restarts."""

    http_status = 503
    default_code = "engine_dead"


class UpstreamTimeout(EngineError):
    """No usable sample before the request's time limit (a slow engine or upstream)."""

    http_status = 504
    default_code = "upstream_timeout"


class UpstreamError(EngineError):
    """A remote upstream failed: a 5xx answer or no reachable replica after retries."""

    http_status = 502
    default_code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field as a dotted path."""


class VerifierError(RuntimeError):
    """A verifier answered, but not with a usable score (the request degrades to a vote)."""
