"""Errors in OpenAI's envelope: {"error": {"message", "type", "param", "code"}} with the right HTTP status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Raised by code the worker shares too (job options, integrations), so it lives where no web framework is imported.
from tuneforge.service.api_error import APIError, not_found  # noqa: F401  (re-exported: routes import them here)
from tuneforge.service.limits import RateLimited

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}


def envelope(
    status: int, message: str, code: str | None = None, param: str | None = None, *, headers: dict | None = None,
    error_type: str | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": error_type or ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if not should_retry(status):
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


def rate_limited_response(exc: RateLimited) -> JSONResponse:
    """429 with `retry-after`; a quota (only freeing something helps) also says `x-should-retry: false`."""
    headers = {"retry-after": str(exc.retry_after)}
    if not exc.retry:
        headers["x-should-retry"] = "false"
    error_type = "insufficient_quota" if exc.code == "quota_exceeded" else "requests"
    return envelope(429, exc.message, exc.code, exc.param, headers=headers, error_type=error_type)


def should_retry(status: int) -> bool:
    """Whether asking again unchanged can succeed. The openai SDK retries 408, 409, 429 and 5xx unless the
    reply says `x-should-retry: false`; every 409 here is a state conflict (cancel a finished job, resume one
    that is not paused, an Idempotency-Key reused with another body) that a retry only repeats, so the
    SDK must raise at once. 408 and 429 stay retryable, and 5xx: a crash may not happen twice."""
    return status in (408, 429) or status >= 500


def _param_path(location) -> str | None:
    """pydantic's error location as the client wrote the field: `hyperparameters.n_epochs`, `integrations[0].type`.
    The tags pydantic adds for the member of a union it tried (`literal['auto']`, `constrained-int`,
    `function-after[...]`) are not fields, and are dropped."""
    text = ""
    for part in location:
        if part in ("body", "query", "path", "header", "cookie"):
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif any(mark in str(part) for mark in "[(") or str(part) in UNION_TAGS:
            continue
        else:
            text += ("." if text else "") + str(part)
    return text or None


UNION_TAGS = {"int", "float", "str", "bool", "dict", "list", "none", "constrained-int", "constrained-float",
              "constrained-str", "is-instance", "lax-or-strict", "json-or-python"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    param = _param_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing":
        if param is None:
            return "Missing the request body (a JSON object).", None
        return f"Missing required parameter: '{param}'.", param
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    # A union's members fail one by one (`'auto'` or an integer of 1 or more): say every way to be right.
    reasons = []
    for error in errors:
        if _param_path(error.get("loc", ())) == param and error.get("msg") not in reasons:
            reasons.append(error.get("msg", "invalid"))
    where = f"'{param}'" if param else "the request body"
    return f"Invalid value for {where}: {'; or '.join(reasons)}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return envelope(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RateLimited)
    async def rate_limited(_request: Request, exc: RateLimited) -> JSONResponse:
        return rate_limited_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return envelope(400, message, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404:
            message = "Unknown request URL. Please check the URL and method."
        return envelope(exc.status_code, message, None, None)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        return envelope(
            500, f"The server had an error while processing your request ({type(exc).__name__}).", "server_error"
        )
