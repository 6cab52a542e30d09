"""/v1/models and /v1/chat/completions (plain and streamed as server-sent events, like OpenAI)."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep
from tuneforge.service.errors import APIError, not_found
from tuneforge.service.inference_client import InferenceError
from tuneforge.service.limits import check_chat_tokens
from tuneforge.service.model_ids import find_model, published_job
from tuneforge.service.schemas import ChatCompletionCreate, model_public
from tuneforge.service.store import Job, new_id

router = APIRouter(prefix="/v1")


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


def _chunk(
    completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None, usage: dict | None = None
) -> str:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionCreate, request: Request, org: OrgDep, session: SessionDep, settings: SettingsDep
):
    check_chat_tokens(request, org.id, body)  # 429 with retry-after past the org's tokens per minute
    base, adapter = _resolve(session, settings, org.id, body.model)
    session.close()  # generation can take a while; don't hold a database connection through it
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    inference_request = {
        "model": base,
        "adapter": adapter,
        "messages": [
            {"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages
        ],
        "max_new_tokens": body.max_completion_tokens or body.max_tokens or 256,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "seed": body.seed,
        "stop": stop,
        "stream": body.stream,
    }
    client = request.app.state.inference
    completion_id = new_id("chatcmpl")
    created = int(time.time())

    if not body.stream:
        result = None
        try:
            async for message in client.generate(inference_request):
                result = message.get("result", result)
        except InferenceError as exc:
            raise APIError(503, f"Inference failed: {exc}", code="inference_failed") from exc
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["text"], "refusal": None},
                    "logprobs": None,
                    "finish_reason": result["finish_reason"],
                }
            ],
            "usage": _usage(result),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        yield _chunk(completion_id, created, body.model, {"role": "assistant", "content": ""}, None)
        try:
            async for message in client.generate(inference_request):
                if "token" in message:
                    yield _chunk(completion_id, created, body.model, {"content": message["token"]}, None)
                elif "result" in message:
                    result = message["result"]
                    yield _chunk(completion_id, created, body.model, {}, result["finish_reason"])
                    if include_usage:
                        yield _chunk(completion_id, created, body.model, {}, None, usage=_usage(result))
        except InferenceError as exc:
            error = {
                "error": {
                    "message": f"Inference failed: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": "inference_failed",
                }
            }
            yield f"data: {json.dumps(error)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _usage(result: dict) -> dict:
    prompt, completion = int(result.get("prompt_tokens", 0)), int(result.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
