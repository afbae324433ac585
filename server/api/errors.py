"""Error mapping: every failure leaves as `{"error": {message, type, param, code}}`.

The serving path raises `server.errors.APIError` (or one of its subclasses, which carry their
own status and code); the handlers installed here turn those, validation failures, HTTP
exceptions and anything unexpected into the same body, so no input produces a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.stores import StoreUnavailable
from server.api.deps import authenticate_first
from server.errors import APIError, StoreDown, bad_request, echoed, internal_error

log = logging.getLogger("t2serve.api")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at `path`: routes that share a path each know only their
    own, so Starlette's 405 would name just one of them in `Allow`."""
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 't2', 'max_samples') -> 't2.max_samples', ('query', 'since') -> 'since': the
    field as the client wrote it, without FastAPI's location or pydantic's union-branch tags;
    each part bounded (`echoed`), as an unknown field's name is the caller's own text."""
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(map(echoed, parts)) or None


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
    if kind == "unsupported_parameter":
        return bad_request(f"{msg}.", param=param, code="unsupported_parameter")
    where = f"'{param}'" if param else "the request body"
    return bad_request(f"Invalid value for {where}: {msg}.", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to an OpenAI error body; the catch-all logs the traceback and hides it."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            await authenticate_first(request)  # 401 beats a bad body, even one that is not JSON
        except APIError as denied:
            return error_response(denied)
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return error_response(APIError(exc.status_code, message, headers=headers))

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(StoreDown())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(internal_error())
