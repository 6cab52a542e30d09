"""/v1/models and /v1/chat/completions (plain and streamed as server-sent events, like OpenAI).

What a chat request may hold and how it maps onto the inference process is service/chat_completions.py;
this module is the HTTP around it: admission (429 with retry-after when the model's queue is full),
errors in OpenAI's envelope (504 on timeout), and cancelling generation when the client disconnects.

A chat request touches the database once, in `_allowed_model`: one short session in one worker thread, so
no connection is held while the request waits for anything (a thread, the model's queue, its tokens).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.background import BackgroundTask

from tuneforge.service.chat_completions import ChunkAssembler, completion
from tuneforge.service.chat_completions import inference_request as build_inference_request
from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep, request_org
from tuneforge.service.errors import APIError, envelope, not_found, rate_limited_response
from tuneforge.service.inference_client import InferenceError, Overloaded
from tuneforge.service.limits import RateLimited, check_chat_tokens
from tuneforge.service.model_ids import find_model, published_job
from tuneforge.service.schemas import ChatCompletionCreate, model_public
from tuneforge.service.store import Job, new_id

router = APIRouter(prefix="/v1")
DISCONNECT_POLL_SECONDS = 0.25


@router.get("/models")
def list_models(org: OrgDep, session: SessionDep, settings: SettingsDep) -> dict:
    data = [model_public(name, "tuneforge") for name in settings.base_models]
    jobs = session.scalars(
        select(Job)
        .where(Job.org_id == org.id, Job.status == "succeeded", Job.model_deleted.is_(False))
        .order_by(Job.seq)
    ).all()
    data += [model_public(job.fine_tuned_model, org.name, job.finished_at or job.created_at) for job in jobs]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> dict:
    ref = find_model(session, settings, org.id, model_id)
    if ref is None:
        raise not_found("model", model_id, "model")
    if ref.job is None:
        return model_public(model_id, "tuneforge")
    return model_public(model_id, org.name, ref.job.finished_at or ref.job.created_at)


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> dict:
    if model_id in settings.base_models:
        raise APIError(403, f"Base model {model_id!r} cannot be deleted.", code="model_not_deletable", param="model")
    job = published_job(session, org.id, model_id)
    if job is None:
        raise not_found("model", model_id, "model")
    job.model_deleted = True
    session.commit()
    return {"id": model_id, "object": "model", "deleted": True}


def _resolve(session, settings, org_id: str, model_id: str) -> tuple[str, str | None]:
    """(base model, adapter dir or None) for a model id the caller may use: a base, an ft: model or one of
    its checkpoints (model_ids.find_model)."""
    ref = find_model(session, settings, org_id, model_id)
    if ref is None:
        raise APIError(
            404,
            f"The model {model_id!r} does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    return ref.base, str(ref.weights) if ref.weights is not None else None


def _allowed_model(request: Request, body: ChatCompletionCreate) -> tuple[str, str | None]:
    """(base model, adapter dir or None) for the request, once its org may spend the tokens it may cost
    (429 with retry-after past the org's tokens per minute) and may use its model (404).

    Its own session, closed before the route awaits anything, rather than the session dependency: that one
    keeps the connection get_org opened while FastAPI waits for a worker thread to run the next dependency.
    With more requests in flight than the pool has connections, the worker threads all sat in get_org waiting
    for a connection while the requests holding the connections waited for a thread, until the pool's timeout
    answered 500 (issue 19)."""
    with request.app.state.sessionmaker() as session:
        org = request_org(session, request)
        check_chat_tokens(request, org.id, body)
        return _resolve(session, request.app.state.settings, org.id, body.model)


def _error_response(exc: InferenceError) -> JSONResponse:
    if isinstance(exc, Overloaded):
        return rate_limited_response(RateLimited(str(exc), exc.retry_after, code=exc.code))
    error_type = "server_error" if exc.status >= 500 else "invalid_request_error"
    return envelope(exc.status, str(exc), exc.code, error_type=error_type)


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionCreate, request: Request):
    base, adapter = await run_in_threadpool(_allowed_model, request, body)
    inference_request = build_inference_request(body, base, adapter)
    client = request.app.state.inference
    try:
        ticket = client.admit(body.model)
    except Overloaded as exc:
        return _error_response(exc)
    completion_id = new_id("chatcmpl")
    created = int(time.time())
    if body.stream:
        return _stream(client, inference_request, ticket, body, completion_id, created)

    async def answer() -> dict:
        async with aclosing(client.generate(inference_request, ticket)) as messages:
            async for message in messages:
                if "result" in message:
                    return message["result"]
        raise InferenceError("the inference process gave no result")

    # Watch the connection while the answer is made: a client that hangs up cancels its generation.
    task = asyncio.ensure_future(answer())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                return Response(status_code=499)
        result = task.result()
    except InferenceError as exc:
        return _error_response(exc)
    finally:
        if not task.done():
            task.cancel()
        ticket.release()
    return completion(body, result, completion_id, created)


def _stream(client, inference_request: dict, ticket, body, completion_id: str, created: int) -> StreamingResponse:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    assembler = ChunkAssembler(body, completion_id, created)

    async def events():
        # Starlette cancels this generator when the client disconnects; aclosing makes the inner generator's
        # cleanup (the cancel line to the inference process, the ticket) run then, not at garbage collection.
        try:
            for chunk in assembler.opening():
                yield _sse(chunk)
            async with aclosing(client.generate(inference_request, ticket)) as messages:
                async for message in messages:
                    if "token" in message:
                        for chunk in assembler.piece(message):
                            yield _sse(chunk)
                    elif "result" in message:
                        for chunk in assembler.ending(message["result"], include_usage):
                            yield _sse(chunk)
        except InferenceError as exc:
            kind = "server_error" if exc.status >= 500 else "invalid_request_error"
            yield _sse({"error": {"message": str(exc), "type": kind, "param": None, "code": exc.code}})
        finally:
            ticket.release()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(ticket.release),  # also when the body never started (client gone at once)
    )
