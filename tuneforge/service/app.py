"""The OpenAI-compatible fine-tuning API: `tuneforge serve` runs it (uvicorn); `create_app` builds it.

This process never imports torch: training runs in worker processes (tuneforge/service/worker.py) and
chat completions in an inference process (tuneforge/service/inference.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from tuneforge import __version__
from tuneforge.service.errors import envelope, install_error_handlers
from tuneforge.service.file_storage import FileTooLarge
from tuneforge.service.inference_client import InferenceClient
from tuneforge.service.routes import chat, dashboard, files, graders, jobs, tools
from tuneforge.service.settings import Settings
from tuneforge.service.store import make_engine, make_sessionmaker


class UploadSizeLimit:
    """Refuses an upload whose declared size is over the cap before its body is read (413)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
            length = dict(scope["headers"]).get(b"content-length")
            # Multipart framing adds a little; the exact file size is checked again while streaming to disk.
            if length and length.isdigit() and int(length) > self.max_bytes + 64 * 1024:
                response = envelope(413, str(FileTooLarge(self.max_bytes)), "file_too_large", "file")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    engine = make_engine(settings.url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await app.state.inference.close()

    app = FastAPI(title="tuneforge", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.inference = InferenceClient(settings)
    install_error_handlers(app)
    app.add_middleware(UploadSizeLimit, max_bytes=settings.max_upload_bytes)
    for module in (files, jobs, chat, dashboard, graders):
        app.include_router(module.router)
    app.include_router(tools.router)  # /v1/tuneforge/...: the dashboard's validate, preview, adapter, export
    return app
