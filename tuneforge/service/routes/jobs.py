"""/v1/fine_tuning/jobs: create (idempotent), list, retrieve, cancel, pause, resume, events, checkpoints.

A create that the openai SDK retries after a timeout must not make a second job. The SDK marks a retry
with `x-stainless-retry-count` but does not send an Idempotency-Key for OpenAI (its client leaves
`_idempotency_header` unset), so: an `Idempotency-Key` header, when given (e.g. via `extra_headers`), names
the job; without one, a request marked as a retry returns the job an identical request made recently.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import Text, cast, or_, select
from sqlalchemy.exc import IntegrityError

from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep, page
from tuneforge.service.errors import APIError, not_found
from tuneforge.service.file_storage import find_file
from tuneforge.service.integrations import parse_integrations
from tuneforge.service.job_options import check_options
from tuneforge.service.limits import check_job_quota
from tuneforge.service.model_ids import checkpoint_on_disk, find_model, lineage_for
from tuneforge.service.schemas import JobCreate, checkpoint_public, event_public, fine_tuned_name, job_public
from tuneforge.service.store import Job, JobCheckpoint, JobEvent, add_event, new_id, now, transition_job
from tuneforge.service.text_checks import check_identifier, is_identifier
from tuneforge.service.webhooks import record_job_event

router = APIRouter(prefix="/v1/fine_tuning/jobs")
RETRY_WINDOW_SECONDS = 600
METADATA_PARAM = re.compile(r"^metadata\[(.*)\]$", re.DOTALL)


def get_job(session, org_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == org_id)) if is_identifier(job_id, 64) else None
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


def _check_file(session, org_id: str, file_id: str | None, param: str) -> None:
    if file_id is None:
        return
    stored = find_file(session, org_id=org_id, file_id=file_id)
    if stored is None:
        raise APIError(400, f"invalid {param}: no such file {file_id!r}", code="invalid_file", param=param)
    if stored.purpose != "fine-tune":
        raise APIError(
            400,
            f"invalid {param}: file {file_id!r} has purpose {stored.purpose!r}, not 'fine-tune'",
            code="invalid_file",
            param=param,
        )


def _existing_for_retry(session, org_id: str, key: str | None, request_hash: str, retry_count: int) -> Job | None:
    if key:
        job = session.scalar(select(Job).where(Job.org_id == org_id, Job.idempotency_key == key))
        if job is not None and job.request_hash != request_hash:
            raise APIError(
                409,
                "This Idempotency-Key was already used with a different request body.",
                code="idempotency_key_reused",
                param="Idempotency-Key",
            )
        return job
    if retry_count > 0:
        return session.scalar(
            select(Job)
            .where(
                Job.org_id == org_id, Job.request_hash == request_hash, Job.created_at >= now() - RETRY_WINDOW_SECONDS
            )
            .order_by(Job.seq.desc())
            .limit(1)
        )
    return None


@router.post("")
def create_job(
    body: JobCreate,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)] = None,
    retry_count: Annotated[int, Header(alias="x-stainless-retry-count")] = 0,
) -> dict:
    canonical = json.dumps(body.model_dump(exclude_none=True), sort_keys=True)
    request_hash = hashlib.sha256(f"{org.id}\n{canonical}".encode()).hexdigest()
    if idempotency_key is not None:
        check_identifier(idempotency_key, "Idempotency-Key", 256)
    existing = _existing_for_retry(session, org.id, idempotency_key, request_hash, retry_count)
    if existing is not None:
        return job_public(existing)
    check_job_quota(session, settings, org.id)

    parent = find_model(session, settings, org.id, body.model)
    if parent is None:
        raise APIError(
            400,
            f"Model {body.model!r} is not available for fine-tuning; choose one of: "
            f"{', '.join(settings.base_models)}, or a fine-tuned model (ft:...) or checkpoint of yours.",
            code="model_not_available",
            param="model",
        )
    _check_file(session, org.id, body.training_file, "training_file")
    _check_file(session, org.id, body.validation_file, "validation_file")
    if body.method and body.hyperparameters:
        raise APIError(
            400,
            "Give hyperparameters either under method or at the top level, not both.",
            code="invalid_request",
            param="hyperparameters",
        )
    method, hyperparameters = body.method_and_hyperparameters()
    grader = None
    if method == "reinforcement":
        grader = _checked_grader(body, settings)
    options = check_options(body.tuneforge, method)
    lineage = lineage_for(parent)
    job_id = new_id("ftjob")
    job = Job(
        id=job_id,
        org_id=org.id,
        model=body.model,
        lineage=lineage,
        options=options,
        grader=grader,
        integrations=parse_integrations(body.integrations),
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method,
        hyperparameters=hyperparameters,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1),
        job_metadata=body.metadata,
        status="validating_files",
        ft_name=fine_tuned_name(lineage["base_model"], org.name, body.suffix, job_id),
        result_files=[],
        created_at=now(),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(job)
    add_event(session, job_id, f"Created fine-tuning job: {job_id}")
    try:
        session.commit()
    except IntegrityError:
        # The same Idempotency-Key raced us to the insert: answer with the job it made.
        session.rollback()
        existing = _existing_for_retry(session, org.id, idempotency_key, request_hash, retry_count)
        if existing is None:
            raise
        return job_public(existing)
    return job_public(job)


def _checked_grader(body: JobCreate, settings) -> dict:
    from tuneforge.graders import GraderError, validate_grader

    section = body.method.reinforcement if body.method else None
    if section is None:
        raise APIError(400, "A reinforcement job needs method.reinforcement.grader.", code="invalid_request",
                       param="method.reinforcement.grader")
    try:
        return validate_grader(section.grader, python_enabled=getattr(settings, "python_graders", False))
    except GraderError as exc:
        param = getattr(exc, "param", None) or "grader"
        raise APIError(400, str(exc), code="invalid_grader", param=f"method.reinforcement.{param}") from None


def metadata_filter(request: Request) -> dict[str, str] | None:
    """The list's metadata filter as the SDK sends it: `metadata[k]=v` pairs (all must match; {} is no
    filter), or the literal `metadata=null` (None: jobs without metadata). The two forms do not combine."""
    params = request.query_params
    wanted = {match.group(1): value for name, value in params.multi_items() if (match := METADATA_PARAM.match(name))}
    if "metadata" not in params:
        return wanted
    if params["metadata"] != "null" or wanted:
        raise APIError(
            400,
            "Filter on metadata with metadata[KEY]=VALUE (several allowed), or select jobs without metadata with "
            "metadata=null; not both.",
            code="invalid_request",
            param="metadata",
        )
    return None


def _metadata_matches(metadata: dict | None, wanted: dict[str, str] | None) -> bool:
    if wanted is None:
        return not metadata
    return all(isinstance(metadata, dict) and metadata.get(key) == value for key, value in wanted.items())


@router.get("")
def list_jobs(
    request: Request,
    org: OrgDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    query = select(Job).where(Job.org_id == org.id)
    if after:
        query = query.where(Job.seq < get_job(session, org.id, after).seq)
    wanted = metadata_filter(request)
    if wanted == {}:
        rows = session.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)).all()
        return page([job_public(row) for row in rows[:limit]], len(rows) > limit)
    # JSON paths are not portable (SQLite's json_extract misreads keys with quotes, backslashes or non-ASCII
    # characters), so SQL only narrows: the column's text holds each pair as json.dumps wrote it, a LIKE that
    # SQLite and PostgreSQL agree on. The exact test runs on the decoded dict, and the page fills from the rows
    # that pass, so `limit`, `after` and `has_more` mean what they do unfiltered.
    text = cast(Job.job_metadata, Text)
    if wanted is None:
        query = query.where(or_(Job.job_metadata.is_(None), text.in_(("null", "{}"))))
    for key, value in (wanted or {}).items():
        query = query.where(text.contains(json.dumps({key: value})[1:-1], autoescape=True))
    rows = []
    for row in session.scalars(query.order_by(Job.seq.desc()).execution_options(yield_per=200)):
        if _metadata_matches(row.job_metadata, wanted):
            rows.append(row)
            if len(rows) > limit:
                break
    return page([job_public(row) for row in rows[:limit]], len(rows) > limit)


@router.get("/{job_id}")
def retrieve_job(job_id: str, org: OrgDep, session: SessionDep) -> dict:
    return job_public(get_job(session, org.id, job_id))


CANCELLABLE_STATUSES = ("validating_files", "queued", "running", "paused")


def _transition(session, job: Job, statuses: tuple[str, ...], event: str, *, code: str, refusal: str, **values) -> None:
    """Move the job out of one of `statuses` and add `event`, or answer 409 (`refusal` formatted with the
    status the job is in now). Does not commit."""
    if job.status in statuses and transition_job(session, job_id=job.id, statuses=statuses, **values):
        add_event(session, job.id, event)
        return
    session.rollback()
    session.refresh(job)  # the worker may have moved it since we read it: say what it is now
    raise APIError(409, refusal.format(job_id=job.id, status=job.status), code=code)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, org: OrgDep, session: SessionDep) -> dict:
    job = get_job(session, org.id, job_id)
    # The worker holding the job sees the new status at its next heartbeat and stops the trainer.
    _transition(session, job, CANCELLABLE_STATUSES, "Fine-tuning job cancelled", code="job_not_active",
                refusal="Job {job_id} has already {status}; it cannot be cancelled.", status="cancelled",
                finished_at=now())
    session.refresh(job)
    record_job_event(session, job, "cancelled")  # committed with the status (webhooks.py)
    session.commit()
    return job_public(job)


@router.post("/{job_id}/pause")
def pause_job(job_id: str, org: OrgDep, session: SessionDep) -> dict:
    job = get_job(session, org.id, job_id)
    _transition(session, job, ("queued", "running"), "Fine-tuning job paused", code="job_not_pausable",
                refusal="Only queued or running jobs can be paused; job {job_id} is {status}.", status="paused")
    session.commit()
    session.refresh(job)
    return job_public(job)


@router.post("/{job_id}/resume")
def resume_job(job_id: str, org: OrgDep, session: SessionDep) -> dict:
    job = get_job(session, org.id, job_id)
    _transition(session, job, ("paused",), "Fine-tuning job resumed", code="job_not_paused",
                refusal="Only paused jobs can be resumed; job {job_id} is {status}.", status="queued")
    session.commit()
    session.refresh(job)
    return job_public(job)


@router.get("/{job_id}/events")
def list_events(
    job_id: str,
    org: OrgDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict:
    job = get_job(session, org.id, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        cursor = session.scalar(select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job.id))
        if cursor is None:
            raise not_found("event", after, "after")
        query = query.where(JobEvent.seq < cursor.seq)
    rows = session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)).all()
    return page([event_public(row) for row in rows[:limit]], len(rows) > limit)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    job = get_job(session, org.id, job_id)
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job.id)
    if after:
        cursor = session.scalar(select(JobCheckpoint).where(JobCheckpoint.id == after, JobCheckpoint.job_id == job.id))
        if cursor is None:
            raise not_found("checkpoint", after, "after")
        query = query.where(JobCheckpoint.seq < cursor.seq)
    # The trainer keeps only its newest checkpoints: a row whose folder was pruned is no longer a model.
    rows = [
        row
        for row in session.scalars(query.order_by(JobCheckpoint.seq.desc())).all()
        if checkpoint_on_disk(settings, job, row.step_number)
    ][: limit + 1]
    return page([checkpoint_public(row, job) for row in rows[:limit]], len(rows) > limit)
