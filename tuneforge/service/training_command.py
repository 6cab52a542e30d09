"""`tuneforge train --data FILE --output RUNS/<job id> --method M --model M --seed N ... --save-every N --resume auto`:
the command line the worker runs for a job, and the hyperparameters a job's "auto" values resolve to.

The defaults come from the trainer itself (tuneforge.config.TrainConfig) and OpenAI's epochs rule
(tuneforge.data.validate.auto_epochs), so the numbers reported on the job are the ones the run uses.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import TrainConfig
from tuneforge.data.validate import TARGET_EPOCHS, auto_epochs
from tuneforge.service.file_storage import file_path
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job

# The service trains LoRA adapters: learning_rate_multiplier scales the trainer's LoRA learning rate.
BASE_LEARNING_RATE = TrainConfig(full=False).resolved_learning_rate()
DEFAULT_BETA = TrainConfig().beta


def trainer_method(job_method: str) -> str:
    """The trainer's --method for a job's method type ("supervised" or "dpo")."""
    return "dpo" if job_method == "dpo" else "sft"


def resolve_hyperparameters(hyper: dict, n_examples: int | None) -> dict:
    """Replace "auto" with the values the run will use (reported back on the job, as OpenAI does)."""
    resolved = dict(hyper)
    if resolved.get("n_epochs", "auto") == "auto":
        # Without a count of examples, OpenAI's rule has only its target to go on.
        resolved["n_epochs"] = (auto_epochs(n_examples) if n_examples is not None else None) or TARGET_EPOCHS
    if resolved.get("batch_size", "auto") == "auto":
        resolved["batch_size"] = max(1, min(8, (n_examples or 1) // 32))
    if resolved.get("learning_rate_multiplier", "auto") == "auto":
        resolved["learning_rate_multiplier"] = 1.0
    if "beta" in resolved and resolved["beta"] == "auto":
        resolved["beta"] = DEFAULT_BETA
    return resolved


def train_command(settings: Settings, job: Job, run_dir: Path) -> list[str]:
    hyper = job.hyperparameters or {}
    command = [
        *settings.train_command,
        "--data",
        str(file_path(settings, job.training_file)),
        "--output",
        str(run_dir),
        "--method",
        trainer_method(job.method),
        "--model",
        job.model,
        "--seed",
        str(job.seed),
    ]
    if job.validation_file:
        command += ["--validation-data", str(file_path(settings, job.validation_file))]
    if isinstance(hyper.get("n_epochs"), int):
        command += ["--epochs", str(hyper["n_epochs"])]
    if isinstance(hyper.get("batch_size"), int):
        command += ["--batch-size", str(hyper["batch_size"])]
    if isinstance(hyper.get("learning_rate_multiplier"), int | float):
        command += ["--lr", repr(BASE_LEARNING_RATE * float(hyper["learning_rate_multiplier"]))]
    if job.method == "dpo" and isinstance(hyper.get("beta"), int | float):
        command += ["--beta", repr(float(hyper["beta"]))]
    if settings.max_steps:
        command += ["--max-steps", str(settings.max_steps)]
    # Checkpoints in a run folder that outlives the worker: a takeover continues where the dead one stopped.
    command += ["--save-every", str(settings.save_every), "--resume", "auto"]
    return command
