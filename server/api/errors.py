"""OpenAI-style errors: every failure leaves as `{"error": {message, type, param, code}}`.

Routes raise `APIError`; the handlers installed by `install_error_handlers` turn validation
failures, HTTP exceptions and anything unexpected into the same body, so no input produces a
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("t2serve.api")

# OpenAI's `type` per status, for errors raised without an explicit type.
_TYPE_BY_STATUS = {
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
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An HTTP status plus OpenAI's error fields; `headers` go out with it (Retry-After)."""

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
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 't2', 'max_samples') -> 't2.max_samples'; drop pydantic's union-branch tags."""
    parts = [str(p) for p in loc if p != "body" and not str(p).startswith("function-")]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic problem, phrased for a person, with the field as `param`."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("Invalid request body.")
    first = errors[0]
    param = _loc_to_param(first.get("loc", ()))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return bad_request("The request body is not valid JSON.", code="invalid_json")
    if kind == "missing" and param:
        return bad_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    msg = str(first.get("msg", "Invalid value"))
    where = f"'{param}'" if param else "the request body"
    return bad_request(f"Invalid value for {where}: {msg}.", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to an OpenAI error body; the catch-all logs the traceback and hides it."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        err = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
        return err.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(
            500, "The server hit an internal error; it has been logged.", type="server_error"
        ).response()
