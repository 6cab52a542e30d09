"""What a model id names, for chat completions, /v1/models and a job's `model`: a base model, a fine-tuned
model (`ft:{base}:{org}:{suffix}:{id}`) or one of its checkpoints (`ft:...:ckpt-step-N`).

A fine-tuned model is its job's run folder (a LoRA adapter, or a whole model for a full fine-tune); a
checkpoint is `checkpoints/step-N/adapter/` in that folder. Each holds the tokenizer with the chat template
the run trained with (a job's `tuneforge.chat_template`), which is what the inference process renders with;
a checkpoint written before checkpoints carried one is served with the run folder's
(tuneforge.models.adapter_tokenizer_dir). The trainer keeps only its newest checkpoints, so a checkpoint row
whose folder was pruned is no longer a model: listings and lookups check the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tuneforge.runfiles import MANIFEST
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, JobCheckpoint
from tuneforge.service.text_checks import is_identifier

CHECKPOINT_MARK = ":ckpt-step-"


@dataclass(frozen=True)
class ModelRef:
    """A callable model: what it runs on (a base model's name, or a full fine-tune's folder) and the folder
    that changes it (None: the base itself)."""

    model_id: str
    base: str
    weights: Path | None = None
    job: Job | None = None
    step: int | None = None  # a checkpoint's step

    @property
    def full(self) -> bool:
        """A full fine-tune: `weights` is a whole model, not an adapter."""
        return self.weights is not None and not (self.weights / "adapter_config.json").is_file()


def base_model_of(job: Job) -> str:
    """The base model at the root of a job's lineage (its own `model` may be a fine-tuned model it continued)."""
    return (job.lineage or {}).get("base_model") or job.model


def runs_on(job: Job) -> str:
    """What a job's weights are applied to: its base model, or the folder of a full fine-tune it continued."""
    return (job.lineage or {}).get("runs_on") or base_model_of(job)


def run_dir(settings: Settings, job: Job) -> Path:
    return Path(settings.runs_dir) / job.id


def checkpoint_dir(settings: Settings, job: Job, step: int) -> Path:
    return run_dir(settings, job) / "checkpoints" / f"step-{step}"


def checkpoint_on_disk(settings: Settings, job: Job, step: int) -> bool:
    """A checkpoint is a model while its folder is complete and holds an adapter (full fine-tunes keep only
    training state in checkpoints)."""
    folder = checkpoint_dir(settings, job, step)
    return (folder / MANIFEST).is_file() and (folder / "adapter" / "adapter_config.json").is_file()


def published_job(session, org_id: str, model_id: str) -> Job | None:
    if not is_identifier(model_id, 512):
        return None
    return session.scalar(
        select(Job).where(
            Job.org_id == org_id,
            Job.fine_tuned_model == model_id,
            Job.status == "succeeded",
            Job.model_deleted.is_(False),
        )
    )


def find_model(session, settings: Settings, org_id: str, model_id: str) -> ModelRef | None:
    """The model `model_id` names for this org, or None when there is no such model (or it is another org's)."""
    if not is_identifier(model_id, 512):
        return None  # NUL or another control character: no model has it, and PostgreSQL would refuse the query
    if model_id in settings.base_models:
        return ModelRef(model_id, model_id)
    job = published_job(session, org_id, model_id)
    if job is not None:
        return ModelRef(model_id, runs_on(job), run_dir(settings, job), job)
    name, mark, step_text = model_id.rpartition(CHECKPOINT_MARK)
    if not mark or not step_text.isdigit():
        return None
    step = int(step_text)
    # A checkpoint of any job of this org that trained past it, finished or not (OpenAI lists them during
    # the run too), as long as its folder is still there.
    job = session.scalar(select(Job).where(Job.org_id == org_id, Job.ft_name == name, Job.model_deleted.is_(False)))
    if job is None:
        return None
    row = session.scalar(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id, JobCheckpoint.step_number == step))
    if row is None or not checkpoint_on_disk(settings, job, step):
        return None
    return ModelRef(model_id, runs_on(job), checkpoint_dir(settings, job, step) / "adapter", job, step)


def lineage_for(ref: ModelRef) -> dict:
    """What a job continued from: the base it runs on and, for a fine-tuned parent, the parent's job and
    checkpoint, with the parent's own lineage (so a chain SFT -> DPO -> RL reads back to its base)."""
    if ref.job is None:
        return {"base_model": ref.base, "runs_on": ref.base, "parent_model": None}
    return {
        "base_model": base_model_of(ref.job),
        # A LoRA child of a full fine-tune runs on that fine-tune's folder; otherwise on the base.
        "runs_on": str(ref.weights) if ref.full else ref.base,
        "parent_model": ref.model_id,
        "parent_job": ref.job.id,
        "parent_method": ref.job.method,
        "parent_checkpoint_step": ref.step,
        "parent_full": ref.full,
        "parents": [ref.job.id, *((ref.job.lineage or {}).get("parents") or [])],
    }
