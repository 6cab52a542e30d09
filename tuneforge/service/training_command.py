"""`tuneforge train --data FILE --output RUNS/<job id> --method M --model M --seed N ... --save-every N --resume auto`
and `tuneforge compare --adapter RUNS/<job id> ...`: the command lines the worker runs for a job, and the
hyperparameters a job's "auto" values resolve to.

The defaults come from the trainer itself (tuneforge.config.TrainConfig) and OpenAI's epochs rule
(tuneforge.data.validate.auto_epochs), so the numbers reported on the job are the ones the run uses. A job
that continues a fine-tuned model starts from its adapter (`init_adapter`, which DPO and GRPO also take as
their reference policy) or, for a full fine-tune, from its folder as the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config import TrainConfig
from tuneforge.data.validate import TARGET_EPOCHS, auto_epochs
from tuneforge.service.devices import nproc_args
from tuneforge.service.file_storage import file_path
from tuneforge.service.integrations import integration_overrides
from tuneforge.service.job_options import TRAINER_METHODS, gates, is_full, trainer_overrides
from tuneforge.service.model_ids import run_dir, runs_on
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job

DEFAULT_BETA = TrainConfig().beta


# OpenAI keeps a job's last three checkpoints; the trainer's own default is two.
KEEP_CHECKPOINTS = 3
# Few-shot examples in the comparison after training, as in the demo.
DEFAULT_SHOTS = 4


def trainer_method(job_method: str) -> str:
    """The trainer's --method for a job's method type ("supervised", "dpo" or "reinforcement")."""
    return TRAINER_METHODS.get(job_method, "sft")


def resolve_hyperparameters(hyper: dict, n_examples: int | None) -> dict:
    """Replace "auto" with the values the run will use (reported back on the job, as OpenAI does)."""
    resolved = dict(hyper)
    if resolved.get("n_epochs", "auto") == "auto":
        # Without a count of examples, OpenAI's rule has only its target to go on.
        resolved["n_epochs"] = (auto_epochs(n_examples) if n_examples is not None else None) or TARGET_EPOCHS
    if resolved.get("batch_size", "auto") == "auto":
        # What `tuneforge train` uses (a job runs what the command line would): its default, or the whole file
        # when that is smaller. Not OpenAI's ~0.2% of the examples: batch 1 at the LoRA rate over-trains small
        # files (48 tickets, 144 steps: +5.2% general perplexity, failing the forgetting gate).
        default = TrainConfig().batch_size
        resolved["batch_size"] = max(1, min(default, n_examples or default))
    if resolved.get("learning_rate_multiplier", "auto") == "auto":
        resolved["learning_rate_multiplier"] = 1.0
    if "beta" in resolved and resolved["beta"] == "auto":
        resolved["beta"] = DEFAULT_BETA
    return resolved


def parent_weights(settings: Settings, job: Job) -> Path | None:
    """The folder of the fine-tuned model (or checkpoint) a job continues; None for a job on a base model."""
    lineage = job.lineage or {}
    if not lineage.get("parent_job"):
        return None
    # The parent's run folder, named by its job id as every run folder is (model_ids.run_dir).
    folder = run_dir(settings, Job(id=lineage["parent_job"]))
    if lineage.get("parent_checkpoint_step") is not None:
        folder = folder / "checkpoints" / f"step-{lineage['parent_checkpoint_step']}" / "adapter"
    return folder


def write_grader(job: Job, run_dir: Path) -> Path:
    """A reinforcement job's grader, where the trainer's `grader` key reads it."""
    path = run_dir / "grader.json"
    path.write_text(json.dumps(job.grader))
    return path


def train_command(settings: Settings, job: Job, run_dir: Path, *, n_processes: int = 1) -> list[str]:
    hyper = job.hyperparameters or {}
    options = job.options or {}
    parent = parent_weights(settings, job)
    lineage = job.lineage or {}
    # A full fine-tune continued is the model itself; an adapter continued is the starting adapter.
    model = str(parent) if parent is not None and lineage.get("parent_full") else runs_on(job)
    command = [
        *settings.train_command,
        "--data",
        str(file_path(settings, job.training_file)),
        "--output",
        str(run_dir),
        "--method",
        trainer_method(job.method),
        "--model",
        model,
        "--seed",
        str(job.seed),
    ]
    command += nproc_args(n_processes)
    if job.validation_file:
        command += ["--validation-data", str(file_path(settings, job.validation_file))]
    if isinstance(hyper.get("n_epochs"), int):
        command += ["--epochs", str(hyper["n_epochs"])]
    if isinstance(hyper.get("batch_size"), int):
        command += ["--batch-size", str(hyper["batch_size"])]
    if isinstance(hyper.get("learning_rate_multiplier"), int | float):
        # learning_rate_multiplier scales the trainer's own rate: LoRA's, or full fine-tuning's.
        base_rate = TrainConfig(full=is_full(options)).resolved_learning_rate()
        command += ["--lr", repr(base_rate * float(hyper["learning_rate_multiplier"]))]
    if job.method == "dpo" and isinstance(hyper.get("beta"), int | float):
        command += ["--beta", repr(float(hyper["beta"]))]
    if settings.max_steps:
        command += ["--max-steps", str(settings.max_steps)]
    # Checkpoints in a run folder that outlives the worker: a takeover continues where the dead one stopped.
    command += ["--save-every", str(settings.save_every), "--resume", "auto"]
    overrides = [f"keep_checkpoints={KEEP_CHECKPOINTS}"]
    if parent is not None and not lineage.get("parent_full"):
        overrides.append(f"init_adapter={parent}")
    if job.method == "reinforcement":
        overrides += [f"grader={write_grader(job, run_dir)}", *reinforcement_overrides(hyper)]
    overrides += [f"{key}={value}" for key, value in integration_overrides(job.integrations or []).items()]
    # The job's own options last: an option the user set wins over the service's choice above.
    return command + overrides + trainer_overrides(options)


def reinforcement_overrides(hyper: dict) -> list[str]:
    """OpenAI's reinforcement knobs as GRPO settings: compute_multiplier scales the completions sampled per
    prompt (group_size, 4 by default), eval_interval is the validation interval in steps. eval_samples and
    reasoning_effort have no GRPO counterpart and are reported back as given."""
    items = []
    multiplier = hyper.get("compute_multiplier")
    if isinstance(multiplier, int | float):
        items.append(f"group_size={max(2, round(TrainConfig().group_size * float(multiplier)))}")
    if isinstance(hyper.get("eval_interval"), int):
        items.append(f"eval_every={hyper['eval_interval']}")
    return items


def compare_command(settings: Settings, job: Job, run_dir: Path) -> list[str] | None:
    """`tuneforge compare` for a trained job: base zero-shot and few-shot vs the fine-tune on its validation
    file, and forgetting with the job's gates; the report lands in RUN/report. None: evaluation is off."""
    options = job.options or {}
    if options.get("evaluate") is False:
        return None
    command = [*settings.compare_command, "--adapter", str(run_dir), "--output", str(run_dir / "report")]
    lineage = job.lineage or {}
    if lineage.get("runs_on") and lineage["runs_on"] != lineage.get("base_model"):
        command += ["--model", lineage["runs_on"]]  # a LoRA on a full fine-tune: compare against that one
    # Only an SFT job's validation rows are prompts with reference answers (DPO's are pairs, RL's prompts).
    if job.validation_file and job.method == "supervised":
        command += ["--data", str(file_path(settings, job.validation_file))]
        shots = options.get("shots", DEFAULT_SHOTS)
        if shots:
            command += ["--shots", str(shots), "--shots-from", str(file_path(settings, job.training_file))]
        if options.get("eval_limit"):
            command += ["--limit", str(options["eval_limit"])]
    for key, value in gates(options).items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command
