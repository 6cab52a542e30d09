"""/v1/tuneforge/...: what the dashboard needs beyond OpenAI's API, each a tuneforge verb run as a child process.

    POST /v1/tuneforge/files/{id}/validate?method=supervised     `tuneforge validate --json` on a stored file
    POST /v1/tuneforge/files/{id}/preview?method=...&n=3&model=  `tuneforge preview --json`: tokens, trained or not
    GET  /v1/tuneforge/jobs/{id}/adapter                        a zip of a succeeded job's adapter (or full model)
    POST /v1/tuneforge/jobs/{id}/export?format=gguf|merged      `tuneforge export`, cached in the job's run folder

The verbs load tokenizers and models, and this process never imports torch or transformers, so each runs as a
child process; the routes are plain `def`s, which FastAPI runs in its thread pool, so a slow verb holds one
thread, never the event loop. Another org's file or job answers 404, as everywhere in the API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep
from tuneforge.service.errors import APIError
from tuneforge.service.file_storage import file_path
from tuneforge.service.file_validation import run_validator
from tuneforge.service.routes.files import get_file
from tuneforge.service.routes.jobs import get_job
from tuneforge.service.store import Job
from tuneforge.service.training_command import trainer_method

router = APIRouter(prefix="/v1/tuneforge")

PREVIEW_TIMEOUT_SECONDS = 300
# Merging and writing a GGUF of a small model takes a minute on a CPU; a 7B model can take many.
EXPORT_TIMEOUT_SECONDS = 3600
# The export formats offered, as `tuneforge export --format` calls them.
EXPORT_FORMATS = {"gguf": "gguf", "merged": "hf"}
# What a run folder holds beside the model: the trainer's state and logs, the service's own files.
NOT_THE_MODEL = {"checkpoints", "exports", "metrics.jsonl", "train.log", "pid", "adapter.zip"}
Method = Literal["supervised", "dpo", "reinforcement"]
_export_locks: dict[tuple[str, str], threading.Lock] = {}
_export_locks_guard = threading.Lock()


# --- files: validation report and loss-mask preview, before any job exists ---------------------------------


@router.post("/files/{file_id}/validate")
def validate_file(
    file_id: str,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    method: Method = "supervised",
    purpose: Literal["training", "validation"] = "training",
) -> dict:
    """The report the job's own validation would give for this file (the same validator, method and minimum
    number of examples as the worker's), with every finding, its line and its fix."""
    stored = get_file(session, org.id, file_id)
    path = _stored_path(settings, file_id)
    param = "training_file" if purpose == "training" else "validation_file"
    report, problem = run_validator(settings.validate_command, path, method=trainer_method(method), param=param)
    if problem:
        raise APIError(503, problem, code="validation_unavailable", param="file_id")
    return {"object": "tuneforge.validation", "file_id": stored.id, "filename": stored.filename, "method": method,
            "purpose": purpose, "report": report}


@router.post("/files/{file_id}/preview")
def preview_file(
    file_id: str,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    method: Method = "supervised",
    n: Annotated[int, Query(ge=1, le=20)] = 3,
    model: str | None = None,
) -> dict:
    """The first `n` examples as the model sees them: each token, and whether it is trained (carries loss)."""
    stored = get_file(session, org.id, file_id)
    path = _stored_path(settings, file_id)
    # preview's --method: dpo shows a chosen and a rejected sequence; other rows render as chat.
    command = [*settings.preview_command, str(path), "--json", "--n", str(n), "--method", "dpo" if method == "dpo" else "sft"]
    base = _tokenizer_model(settings, model)
    if base is not None:
        command += ["--model", base]
    done = _run(command, PREVIEW_TIMEOUT_SECONDS, "preview")
    if done.returncode == 2:  # the file's own problem (an unreadable row): say it as the verb says it
        raise APIError(400, _last_line(done.stderr), code="invalid_file", param="file_id")
    report = _json_object(done.stdout)
    if done.returncode != 0 or report is None:
        raise APIError(503, f"The preview failed (exit {done.returncode}): {_last_line(done.stderr)}",
                       code="preview_unavailable", param="file_id")
    return {"object": "tuneforge.preview", "file_id": stored.id, "filename": stored.filename, "method": method,
            **report}


def _tokenizer_model(settings, model: str | None) -> str | None:
    """The base model whose tokenizer and template a preview uses: a base model as is, a fine-tuned model's
    (`ft:{base}:...`) base; anything else is refused rather than handed to the verb as a path."""
    if not model:
        return None
    base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model
    if base not in settings.base_models:
        raise APIError(400, f"Model {model!r} is not available; choose one of: {', '.join(settings.base_models)} "
                       "or a fine-tuned model of one.", code="model_not_available", param="model")
    return base


def _stored_path(settings, file_id: str) -> Path:
    path = file_path(settings, file_id)
    if not path.exists():
        raise APIError(404, f"The content of file {file_id} no longer exists.", code="file_not_found",
                       param="file_id")
    return path


# --- jobs: the adapter and its exports ------------------------------------------------------------------------


@router.get("/jobs/{job_id}/adapter")
def download_adapter(job_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The fine-tune as `tuneforge train` left it (PEFT adapter or full model, tokenizer, config, summary),
    zipped once into the run folder and served from there afterwards."""
    job = _succeeded_job(session, org.id, job_id)
    run_dir = _run_dir(settings, job)
    target = run_dir / "exports" / "adapter.zip"
    with _export_lock(job.id, "adapter"):
        if not target.exists():
            files = sorted(p for p in run_dir.iterdir() if p.is_file() and p.name not in NOT_THE_MODEL)
            _write_zip(target, [(p, p.name) for p in files])
    return FileResponse(target, media_type="application/zip", filename=f"{_file_stem(job)}-adapter.zip")


@router.post("/jobs/{job_id}/export")
def export_job(
    job_id: str,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    format: Literal["gguf", "merged"] = "gguf",  # noqa: A002 - the query parameter's name
) -> FileResponse:
    """`tuneforge export --format gguf|hf` of the succeeded job, run once (later calls, and calls that arrive
    while it runs, get the same files) and kept in RUNS/<job id>/exports/."""
    job = _succeeded_job(session, org.id, job_id)
    run_dir = _run_dir(settings, job)
    exports = run_dir / "exports"
    served = exports / ("model.gguf" if format == "gguf" else "merged.zip")
    with _export_lock(job.id, format):
        if not served.exists():
            _export(settings.export_command, run_dir, exports, format, served)
    if format == "gguf":
        return FileResponse(served, media_type="application/octet-stream", filename=f"{_file_stem(job)}.gguf")
    return FileResponse(served, media_type="application/zip", filename=f"{_file_stem(job)}-merged.zip")


def _export(export_command: list[str], run_dir: Path, exports: Path, format: str, served: Path) -> None:  # noqa: A002
    """Run the export into a staging folder and move its result into place, so a failed or interrupted export
    leaves nothing that a later call would serve."""
    exports.mkdir(parents=True, exist_ok=True)
    staging = exports / f".{format}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    output = staging / "model.gguf" if format == "gguf" else staging / "merged"
    command = [*export_command, "--adapter", str(run_dir), "--format", EXPORT_FORMATS[format], "--output", str(output)]
    try:
        staging.mkdir()
        done = _run(command, EXPORT_TIMEOUT_SECONDS, "export")
        if done.returncode == 2:  # the verb refused (an architecture GGUF cannot hold, ...): its one line says why
            raise APIError(400, f"The export was refused: {_last_line(done.stderr)}", code="export_refused",
                           param="format")
        if done.returncode != 0 or not output.exists():
            raise APIError(500, f"The export failed (exit {done.returncode}): {_last_line(done.stderr)}",
                           code="export_failed", param="format")
        if format == "gguf":
            os.replace(output, served)
        else:
            _write_zip(served, [(p, str(p.relative_to(output))) for p in sorted(output.rglob("*")) if p.is_file()])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _succeeded_job(session, org_id: str, job_id: str) -> Job:
    job = get_job(session, org_id, job_id)
    if job.status != "succeeded":
        raise APIError(409, f"Job {job_id} is {job.status}; only a succeeded job has a model to download or export.",
                       code="job_not_succeeded", param="fine_tuning_job_id")
    return job


def _run_dir(settings, job: Job) -> Path:
    run_dir = Path(settings.runs_dir) / job.id
    if not run_dir.is_dir():
        raise APIError(404, f"The run folder of job {job.id} no longer exists on this server.",
                       code="run_not_found", param="fine_tuning_job_id")
    return run_dir


def _export_lock(job_id: str, kind: str) -> threading.Lock:
    """One lock per job and output: a second request waits for the first one's result instead of redoing it."""
    with _export_locks_guard:
        return _export_locks.setdefault((job_id, kind), threading.Lock())


def _write_zip(target: Path, members: list[tuple[Path, str]]) -> None:
    """Write the zip beside its final name, then rename: a half-written zip is never served."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for path, name in members:
                # Weights barely compress; text (configs, tokenizer) does.
                kind = zipfile.ZIP_STORED if path.suffix in (".safetensors", ".gguf", ".bin") else zipfile.ZIP_DEFLATED
                archive.write(path, name, compress_type=kind)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _file_stem(job: Job) -> str:
    """A download name from the fine-tuned model's name, safe on every file system."""
    name = job.fine_tuned_model or job.id
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or job.id


def _run(command: list[str], timeout: int, verb: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise APIError(504, f"tuneforge {verb} did not finish within {timeout} seconds.", code=f"{verb}_timeout") from None
    except OSError as exc:
        raise APIError(503, f"tuneforge {verb} could not run: {exc}", code=f"{verb}_unavailable") from None


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no output"


def _json_object(stdout: str) -> dict | None:
    """The verb prints exactly one JSON object, on its last line."""
    lines = (stdout or "").strip().splitlines()
    try:
        value = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
