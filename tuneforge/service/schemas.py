"""Request schemas (strict: unknown fields are errors) and the public shapes of files, jobs, events,
checkpoints and models, matching the openai SDK's types (openai/types/fine_tuning/)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tuneforge.service.store import Job, JobCheckpoint, JobEvent, StoredFile
from tuneforge.service.text_checks import has_control

Auto = Literal["auto"]


def _no_control(value: str) -> str:
    if has_control(value):
        raise ValueError("control characters (such as NUL) are not allowed")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


def Identifier(max_length: int):  # noqa: N802 (a type, as pydantic's constr)
    """An id or a name that is looked up or stored: 1..max_length characters, no control characters."""
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_no_control)]


# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
MetadataKey = Annotated[str, Field(max_length=64), AfterValidator(_no_control)]
MetadataValue = Annotated[str, Field(max_length=512), AfterValidator(_no_nul)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(Strict):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class ReinforcementHyperparameters(Hyperparameters):
    # OpenAI's reinforcement knobs, mapped onto GRPO by training_command.reinforcement_overrides.
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"
    eval_interval: Auto | Annotated[int, Field(ge=1, le=100000)] = "auto"
    eval_samples: Auto | Annotated[int, Field(ge=1, le=100)] = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class SupervisedMethod(Strict):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(Strict):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(Strict):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class JobCreate(Strict):
    model: Identifier(256)
    training_file: Identifier(64)
    validation_file: Identifier(64) | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    integrations: Annotated[list[Any], Field(max_length=8)] | None = None
    # tuneforge's own settings (the SDK sends them with extra_body); checked by service/job_options.py.
    tuneforge: Annotated[dict[Annotated[str, Field(max_length=64)], Any], Field(max_length=64)] | None = None

    def method_and_hyperparameters(self) -> tuple[str, dict]:
        """The method type and its hyperparameters, with "auto" for anything not given."""
        method_type = self.method.type if self.method else "supervised"
        chosen: BaseModel | None = None
        section = getattr(self.method, method_type, None) if self.method else None
        if section is not None:
            chosen = section.hyperparameters
        if chosen is None:
            chosen = self.hyperparameters
        defaults = {"dpo": DpoHyperparameters, "reinforcement": ReinforcementHyperparameters}.get(
            method_type, Hyperparameters
        )()
        values = defaults.model_dump()
        if chosen is not None:
            values.update({k: v for k, v in chosen.model_dump().items() if k in values})
        return method_type, values


# --- chat completions: the fields of OpenAI's chat.completions.create (openai/types/chat/) we implement ------
# Strict like the job schemas: a field we do not implement is a 400 naming it ("Unrecognized request argument
# supplied: audio"), never dropped. Accepted and ignored, because ignoring them changes no answer: `user` and
# `safety_identifier` (end-user ids for abuse tracking), `prompt_cache_key` (a caching hint; the engine shares
# prefixes on its own), `metadata` (tags for stored completions), `store` only false (nothing is stored),
# `service_tier` only "auto"/"default". The rest (audio, modalities other than text, prediction,
# reasoning_effort, verbosity, web_search_options, functions/function_call, ...) are refused.

MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ToolCallFunction(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    arguments: str


class MessageToolCall(Strict):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None  # an assistant turn the SDK echoes back; not shown to the model

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict:
        """The message as the chat template sees it, in the shape tuneforge trains tool calls in
        (data/formats.py keeps OpenAI's tool_calls, tool_call_id and name on the message)."""
        message = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        for key in ("tool_call_id", "name"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # the SDK's flag for padding chunks; there is nothing to pad here


class FunctionDefinition(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


TokenBias = Annotated[float, Field(ge=-100, le=100)]


class ChatCompletionCreate(Strict):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], TokenBias] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted and ignored (see the note above).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = None
    store: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None


def file_public(stored: StoredFile) -> dict:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def job_public(job: Job) -> dict:
    hyper = dict(job.hyperparameters or {})
    common = {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier") if k in hyper}
    method_key = job.method if job.method in ("dpo", "reinforcement") else "supervised"
    method = {"type": method_key, method_key: {"hyperparameters": hyper}}
    if job.method == "reinforcement":
        method[method_key]["grader"] = job.grader
    evaluation = job.evaluation or {}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "model": job.model,
        "organization_id": job.org_id,
        "status": job.status,
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": common,
        "method": method,
        "result_files": list(job.result_files or []),
        "seed": job.seed,
        "metadata": job.job_metadata,
        "user_provided_suffix": job.suffix,
        "estimated_finish": job.estimated_finish if job.status in ("validating_files", "queued", "running") else None,
        "integrations": list(job.integrations or []),
        # Not in OpenAI's shape (the SDK keeps extra fields): the evaluation report's file id, its headline
        # figures, the settings beyond OpenAI's, and what the job continued from.
        "report_file": job.report_file,
        "eval": evaluation.get("eval"),
        "forgetting": evaluation.get("forgetting"),
        "verdict": evaluation.get("verdict"),
        "training_metrics": evaluation.get("training"),
        "tuneforge": dict(job.options or {}),
        "lineage": job.lineage,
    }


def event_public(event: JobEvent) -> dict:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data or {},
    }


def checkpoint_public(checkpoint: JobCheckpoint, job: Job) -> dict:
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": checkpoint.created_at,
        "fine_tuning_job_id": job.id,
        "fine_tuned_model_checkpoint": f"{job.ft_name}:ckpt-step-{checkpoint.step_number}",
        "step_number": checkpoint.step_number,
        "metrics": checkpoint.metrics or {},
    }


def fine_tuned_name(base_model: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:{base}:{org}:{suffix}:{id}, with the job id's whole random part (24 hex digits):
    the 8 that names once kept could collide between two jobs with the same suffix. Names are stored on their
    jobs (Job.ft_name), so models named the old way keep their names."""
    return f"ft:{base_model}:{org_name}:{suffix or ''}:{job_id.removeprefix('ftjob-')}"


def model_public(model_id: str, owned_by: str, created: int = 0) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
