"""/ : the dashboard (static HTML + JS, no CDN); it calls the same /v1 API with the user's key.

Its pages are built without innerHTML; the Content-Security-Policy is the second wall against stored XSS:
scripts only from this server, no inline script, no plugins, and the evaluation report (an HTML page made from
user data) is shown in a sandboxed frame.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter()
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():
        from tuneforge.service.errors import not_found

        raise not_found("file", name)
    media = {"js": "text/javascript", "css": "text/css"}.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media)


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict:
    return {"ok": True}
