"""/v1/fine_tuning/alpha/graders/run and /validate: OpenAI's graders API over tuneforge.graders.

A score_model or label_model grader's `model` is any model this org may chat with (a base model or its
own fine-tuned model); it answers through the inference process, like /v1/chat/completions. Python
graders run only when the operator started the server with TUNEFORGE_PYTHON_GRADERS=1.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from tuneforge.graders import GraderError, SandboxUnavailable, run_grader, validate_grader
from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep
from tuneforge.service.errors import APIError
from tuneforge.service.inference_client import InferenceError
from tuneforge.service.routes.chat import _resolve

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders")
MODEL_GRADERS = ("score_model", "label_model")
GRADER_MODEL_SECONDS = 600


class GraderRunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict
    model_sample: str
    item: dict | None = None


class GraderValidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict


def checked(grader: dict, settings) -> dict:
    try:
        return validate_grader(grader, python_enabled=settings.python_graders)
    except GraderError as exc:
        raise APIError(400, exc.message, code="invalid_grader", param=exc.param) from None


def grader_models(spec: dict, param: str = "grader") -> dict[str, str]:
    """{model id: the param path of the first grader naming it}."""
    if spec["type"] == "multi":
        found: dict[str, str] = {}
        for name, grader in spec["graders"].items():
            found = grader_models(grader, f"{param}.graders.{name}") | found
        return found
    return {spec["model"]: f"{param}.model"} if spec["type"] in MODEL_GRADERS else {}


@router.post("/validate")
def validate(body: GraderValidateBody, org: OrgDep, settings: SettingsDep) -> dict:
    return {"grader": checked(body.grader, settings)}


@router.post("/run")
async def run(body: GraderRunBody, request: Request, org: OrgDep, session: SessionDep, settings: SettingsDep) -> dict:
    spec = checked(body.grader, settings)
    targets = {}
    for model_id, param in grader_models(spec).items():
        try:
            targets[model_id] = _resolve(session, settings, org.id, model_id)
        except APIError as exc:
            raise APIError(400, exc.message, code="invalid_grader", param=param) from None
    session.close()  # a grader model or a python grader can take a while
    client = request.app.state.inference
    loop = asyncio.get_running_loop()

    def generate(model_id: str, messages: list[dict], sampling_params: dict) -> dict:
        base, adapter = targets[model_id]
        inference_request = {
            "model": base,
            "adapter": adapter,
            "messages": messages,
            "max_new_tokens": sampling_params.get("max_completions_tokens") or 256,
            # Greedy unless asked otherwise: the same answer graded twice should get the same score.
            "temperature": sampling_params.get("temperature") or 0.0,
            "top_p": sampling_params.get("top_p") or 1.0,
            "seed": sampling_params.get("seed"),
            "stream": False,
        }
        return asyncio.run_coroutine_threadsafe(answer(client, inference_request), loop).result(GRADER_MODEL_SECONDS)

    try:
        return await run_in_threadpool(run_grader, spec, body.model_sample, body.item, generate=generate,
                                       python_enabled=settings.python_graders)
    except SandboxUnavailable as exc:
        raise APIError(503, f"Python graders cannot run on this server: {exc}", code="python_grader_unavailable",
                       param="grader") from None


async def answer(client, inference_request: dict) -> dict:
    result = None
    try:
        async for message in client.generate(inference_request):
            result = message.get("result", result)
    except InferenceError as exc:
        raise RuntimeError(f"inference failed: {exc}") from None
    if result and result.get("choices"):  # the protocol answers n choices; a grader asks for one
        result = {**result, **result["choices"][0]}
    return result
