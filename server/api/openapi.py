"""The OpenAPI document, made to tell the truth about what the server returns.

FastAPI's generated document lists 422 (the server answers validation errors with 400), leaves
out the statuses the serving path raises, and types every route as JSON. This rewrites it: each
route lists the statuses it can return with the OpenAI error schema, completions list their
event-stream 200 next to the JSON one, and `/metrics` is Prometheus text.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.api.protocol import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_REF = REF_TEMPLATE.format(model="ErrorResponse")
REASONS = {
    400: "Invalid request: the `param` field names the offending field",
    401: "Missing, malformed or unknown API key",
    403: "The key may not do this (model not allowed, cap exceeded, tenant key on admin)",
    404: "No such model, tenant or route",
    409: "Conflicts with what exists: a key's label is taken, the key to rotate is revoked or "
    "expired, a tenant id is taken (or the admin API's tenant limit reached), or the tenant to "
    "delete is defined in the config file",
    405: "Method not allowed on this route",
    413: "The request body is over the server's limit",
    429: "The tenant's budget is spent; Retry-After says when it frees up",
    500: "An internal error (logged; no details are returned)",
    502: "A remote upstream failed",
    503: "The model's engine is starting or has died, or a store (the ledger, the admin state) "
    "cannot be reached; Retry-After where it will recover",
    504: "No sample finished within the request's time limit",
}
COMPLETION = (400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504)
ERRORS_BY_PATH: dict[str, tuple[int, ...]] = {
    "/v1/chat/completions": COMPLETION,
    "/v1/completions": COMPLETION,
    "/v1/models": (401, 405, 500),
    "/v1/models/{model_id}": (401, 404, 405, 500),
    "/healthz": (405,),
    "/readyz": (405,),
    "/metrics": (405, 500),
}
ADMIN_ERRORS = (400, 401, 403, 404, 405, 413, 500, 503)  # 503: the admin or ledger store is down
# statuses only some methods of a path return: (method, path) → those statuses
ERRORS_BY_OPERATION: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/admin/tenants/{tenant_id}/keys"): (409,),  # duplicate_label
    ("post", "/admin/tenants/{tenant_id}/keys/{prefix}/rotate"): (409,),  # and key_not_active
    ("post", "/admin/tenants"): (409,),  # tenant_exists, tenant_limit_reached
    ("delete", "/admin/tenants/{tenant_id}"): (409,),  # tenant_in_config_file
}
SSE_EVENT = {
    "type": "object",
    "description": "One event of a stream (`stream: true`): `data` is a JSON chunk "
    "(chat.completion.chunk or text_completion; the role chunk at once, empty deltas with "
    "`t2_progress` while waves run, then the text, a chunk with t2, and with "
    "stream_options.include_usage a last one with usage), an error body, or [DONE].",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": REASONS[status],
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def truthful_openapi(app: FastAPI, models: list[str] | None = None) -> dict[str, Any]:
    """The document; `models` (the served ids) become examples of every request's `model`."""
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        model_field = schemas.get(name, {}).get("properties", {}).get("model")
        if model_field is not None and models:
            model_field["examples"] = list(models)
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a tenant's API key"},
        "admin": {"type": "http", "scheme": "bearer", "description": "the admin key"},
    }
    for path, item in doc.get("paths", {}).items():
        statuses = ERRORS_BY_PATH.get(path, ADMIN_ERRORS if path.startswith("/admin") else ())
        for method, operation in item.items():
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
            elif path.startswith("/admin"):
                operation["security"] = [{"admin": []}]
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in (*statuses, *ERRORS_BY_OPERATION.get((method, path), ())):
                if not (method == "get" and status == 413):  # GET routes take no body
                    responses[str(status)] = _error(status)
            ok = responses.get("200", {})
            if path in ("/v1/chat/completions", "/v1/completions"):
                ok.setdefault("content", {})["text/event-stream"] = {"schema": SSE_EVENT}
            if path == "/metrics":
                ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
            if path == "/readyz":
                ok["content"] = {"application/json": {"schema": {"type": "object"}}}
                responses["503"] = {
                    "description": "An engine is still starting or failed to start",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
    return doc


def install_openapi(app: FastAPI, models: list[str]) -> None:
    """Serve `truthful_openapi` as /openapi.json (built once, on first request)."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(truthful_openapi(app, models))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
