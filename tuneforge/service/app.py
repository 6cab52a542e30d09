"""The OpenAI-compatible fine-tuning API: `tuneforge serve` runs it (uvicorn); `create_app` builds it.

This process never imports torch: training runs in worker processes (tuneforge/service/worker.py) and
chat completions in an inference process (tuneforge/service/inference.py).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from tuneforge import __version__
from tuneforge.service.deps import ConnectionGate
from tuneforge.service.errors import install_error_handlers
from tuneforge.service.guard import BodyTooLarge, Guard
from tuneforge.service.inference_client import InferenceClient
from tuneforge.service.limits import Limits
from tuneforge.service.routes import chat, dashboard, files, graders, jobs, tools
from tuneforge.service.settings import Settings
from tuneforge.service.store import make_engine, make_sessionmaker


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    engine = make_engine(
        settings.url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await app.state.inference.close()

    # No /docs: Swagger UI loads its script from a CDN, which would then run on the dashboard's origin with
    # access to the key in localStorage. The schema stays at /openapi.json. Multipart parsing stops at the
    # settings' part counts and field size (guard.py bounds the whole body).
    app = FastAPI(
        title="tuneforge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        redirect_slashes=False,  # /v1/files/ is a 404 in the envelope, not a bodiless 307 to follow
        form_limits={
            "max_files": settings.max_multipart_files,
            "max_fields": settings.max_multipart_fields,
            "max_part_size": settings.max_multipart_field_bytes,
        },
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.connection_gate = ConnectionGate(settings)  # deps.py: why a request waits for a permit
    app.state.inference = InferenceClient(settings)
    install_error_handlers(app)
    app.state.limits = Limits(settings)
    app.add_exception_handler(BodyTooLarge, lambda _request, exc: exc.response())
    app.add_middleware(Guard, settings=settings, sessionmaker=app.state.sessionmaker, limits=app.state.limits)
    for module in (files, jobs, chat, dashboard, graders):
        app.include_router(module.router)
    app.include_router(tools.router)  # /v1/tuneforge/...: the dashboard's validate, preview, adapter, export
    return app
