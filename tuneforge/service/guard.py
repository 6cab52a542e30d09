"""The wall in front of every route: a pure ASGI middleware (no body is read before it says yes).

In order, for each HTTP request:
1. the Host header is one the server answers (a DNS-rebinding page cannot talk to a loopback server);
2. the path and query hold no control characters and are of sane length (PostgreSQL refuses NUL: every id
   reaching a query must be free of it);
3. /v1/* requests carry a live API key (keys.authenticate), checked before the route parses JSON or
   multipart; then the organisation's request rate and, for an upload, its file quota (limits.py);
4. the body is counted as it arrives, chunked or not: past the limit (settings.max_json_bytes, or
   max_upload_bytes for POST /v1/files) the request ends with 413 and the rest is never read;
5. every answer carries nosniff, frame and referrer headers, and `connection: close` when the server answers
   before reading the whole body (uvicorn would otherwise go on reading it to reuse the connection).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl

import anyio
from starlette.exceptions import HTTPException

from tuneforge.service.api_error import APIError
from tuneforge.service.errors import envelope, rate_limited_response
from tuneforge.service.keys import authenticate
from tuneforge.service.limits import RateLimited, check_file_quota
from tuneforge.service.text_checks import has_control

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_PATH = 2048
MAX_QUERY = 16 * 1024
MAX_QUERY_VALUE = 2048
# Multipart framing and the small form fields beside the file itself.
MULTIPART_OVERHEAD = 64 * 1024
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Answers other than the dashboard's page (which sets its own policy) run nothing if opened in a browser.
DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes its limit; FastAPI lets HTTPExceptions from the body out."""

    def __init__(self, message: str, code: str, param: str | None):
        super().__init__(413, message)
        self.code = code
        self.param = param

    def response(self):
        return envelope(413, self.detail, self.code, self.param)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings) -> frozenset[str] | None:
    """The Host names to answer (None: any). Bound to loopback (or not told, as in tests): loopback names plus
    the configured ones; bound elsewhere: the configured ones, or any when none are."""
    names = {name.lower().strip("[]") for name in settings.allowed_hosts}
    if "*" in names:
        return None
    if settings.bind_host is None or is_loopback(settings.bind_host):
        return frozenset(names | LOOPBACK_NAMES) if names or settings.bind_host else None
    return frozenset(names) or None


def host_name(header: str) -> str:
    """`example.com:8000` -> example.com, `[::1]:8000` -> ::1."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def url_problem(scope) -> tuple[str, str | None] | None:
    """(message, param) when the path or query string is not something to look up."""
    path = scope["path"]
    if len(path) > MAX_PATH:
        return f"The URL path is too long (at most {MAX_PATH} characters).", "path"
    if has_control(path):
        return "The URL path holds a control character (such as NUL).", "path"
    query = scope.get("query_string", b"")
    if len(query) > MAX_QUERY:
        return f"The query string is too long (at most {MAX_QUERY} bytes).", None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if has_control(name) or has_control(value):
            return f"The query parameter {name!r} holds a control character (such as NUL).", name
        if len(value) > MAX_QUERY_VALUE:
            return f"The query parameter {name!r} is too long (at most {MAX_QUERY_VALUE} characters).", name
    return None


class Guard:
    def __init__(self, app, *, settings, sessionmaker, limits):
        self.app = app
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.limits = limits
        self.hosts = allowed_hosts(settings)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        progress = {"complete": not has_body, "started": False}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                progress["started"] = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [header for header in SECURITY_HEADERS if header[0] not in names]
                if b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", DEFAULT_CSP))
                if not progress["complete"] and b"connection" not in names:
                    extra.append((b"connection", b"close"))
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        async def refuse(response):
            await response(scope, receive, guarded_send)

        if self.hosts is not None and host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            await refuse(envelope(400, "This server does not answer for that Host header.", "invalid_host", "Host"))
            return
        problem = url_problem(scope)
        if problem is not None:
            await refuse(envelope(400, problem[0], "invalid_request", problem[1]))
            return

        path, method = scope["path"], scope["method"]
        upload = method == "POST" and path == "/v1/files"
        if path == "/v1" or path.startswith("/v1/"):
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            try:
                org_id = await anyio.to_thread.run_sync(self._admit, authorization, upload)
            except RateLimited as exc:
                await refuse(rate_limited_response(exc))
                return
            except APIError as exc:
                await refuse(envelope(exc.status, exc.message, exc.code, exc.param))
                return
            scope.setdefault("state", {})["org_id"] = org_id

        if upload:
            limit, param = self.settings.max_upload_bytes + MULTIPART_OVERHEAD, "file"
        else:
            limit, param = self.settings.max_json_bytes, None
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await refuse(self._too_large(limit, param).response())
            return

        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit, param)
                if not message.get("more_body", False):
                    progress["complete"] = True
            return message

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge as exc:
            if progress["started"]:
                raise
            await refuse(exc.response())

    def _too_large(self, limit: int, param: str | None) -> BodyTooLarge:
        if param == "file":
            message = f"File is too large: the limit is {self.settings.max_upload_bytes} bytes."
            return BodyTooLarge(message, "file_too_large", "file")
        message = f"Request body too large: the limit is {limit} bytes (TUNEFORGE_MAX_JSON_BYTES)."
        return BodyTooLarge(message, "request_too_large", None)

    def _admit(self, authorization: str, upload: bool) -> str:
        """The caller's org id, once its key, rate and (for an upload) file quota allow the request."""
        with self.sessionmaker() as session:
            org = authenticate(session, authorization)
            self.limits.check_request(org.id)
            if upload:
                check_file_quota(session, self.settings, org.id)
            return org.id
