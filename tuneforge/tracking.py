"""Experiment trackers:  tuneforge train --data train.jsonl report_to=tensorboard,mlflow

One class per backend behind one small interface: `log(values, step)`, `log_params(params)`,
`close(status)`. The run shell (recipes/run.py) opens them in `start` and calls them where it writes
metrics.jsonl (`log`, `log_valid`) and in `finish`; nothing here runs on its own. metrics.jsonl stays the
record; a tracker gets the same numbers under `<record type>/<key>` (train/loss, train/lr,
train/tokens_per_second, valid/valid_loss, eval/exact_match, forgetting/...) and the config as its
hyperparameters. Offline first: nothing leaves the machine unless the user pointed a backend elsewhere.

    tensorboard  event files in OUTPUT/tensorboard (a resumed run purges what the dead attempt logged past
                 its checkpoint, as metrics.jsonl is trimmed)
    mlflow       a file store in OUTPUT/mlruns, unless MLFLOW_TRACKING_URI is set; a resumed run continues
                 its MLflow run
    trackio      trackio's local database (TRACKIO_DIR, default ~/.cache/huggingface/trackio)
    wandb        offline, files in OUTPUT/wandb, unless WANDB_MODE says otherwise

Packages are optional (`pip install 'tuneforge[tracking]'` brings tensorboard and MLflow; trackio and wandb
are their own); `require_packages` names what is missing in one line before the model loads. Under
torchrun only rank 0 tracks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Protocol

from tuneforge.config import TrainConfig
from tuneforge.errors import UserError

INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install mlflow", "trackio": "pip install trackio",
           "wandb": "pip install wandb"}
DEFAULT_PROJECT = "tuneforge"


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def log_params(self, params: dict) -> None: ...

    def close(self, status: str) -> None: ...


def require_packages(report_to: list[str]) -> None:
    """One line naming what to install for every tracker whose package is missing (exit 2 in the CLI)."""
    missing = [name for name in report_to if not importable(name)]
    if missing:
        raise UserError(f"report_to={','.join(report_to)}: " + ", ".join(
            f"{name} needs `{INSTALL[name]}`" for name in missing), code="missing_package")


def importable(name: str) -> bool:
    try:
        if name == "tensorboard":
            import tensorboard  # noqa: F401
        elif name == "mlflow":
            import mlflow  # noqa: F401
        elif name == "trackio":
            import trackio  # noqa: F401
        elif name == "wandb":
            import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def open_trackers(config: TrainConfig, output: Path, *, resumed_at: int | None, enabled: bool = True) -> Trackers:
    """The trackers `config.report_to` names (none where not `enabled`: ranks other than 0).

    `resumed_at`: the step of the checkpoint a resumed run starts from (None: a fresh run).
    """
    if not enabled or not config.report_to:
        return Trackers([])
    require_packages(config.report_to)
    name = config.run_name or Path(output).resolve().name
    return Trackers([BACKENDS[backend](config, Path(output), name, resumed_at) for backend in config.report_to])


class Trackers:
    """Every tracker of a run as one: each call goes to each of them; `close` is safe to call twice."""

    def __init__(self, trackers: list[Tracker] | None = None):
        self.trackers = list(trackers or [])

    def log(self, values: dict[str, float], step: int) -> None:
        if values:
            for tracker in self.trackers:
                tracker.log(values, step)

    def log_params(self, params: dict) -> None:
        for tracker in self.trackers:
            tracker.log_params(params)

    def close(self, status: str) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(status)


def scalars(kind: str, values: dict | None) -> dict[str, float]:
    """The numbers of a metrics.jsonl record (or a summary section) as tracker keys: `kind/key`, nested
    dicts as `kind/outer/inner`; the record's type and step, text, flags and nulls left out."""
    found: dict[str, float] = {}
    for key, value in (values or {}).items():
        if key in ("type", "step"):
            continue
        if isinstance(value, dict):
            found.update(scalars(f"{kind}/{key}", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{kind}/{key}"] = float(value)
    return found


def flat_params(params: dict) -> dict[str, str | int | float | bool]:
    """Config values as every backend takes hyperparameters: scalars as they are, None and lists as text."""
    return {key: value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            for key, value in params.items()}


class TensorBoardTracker:
    """Scalars, and the config as hyperparameters (the HParams tab) and as text, in OUTPUT/tensorboard."""

    def __init__(self, config: TrainConfig, output: Path, name: str, resumed_at: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops the events an earlier attempt wrote at or after it, as trim_metrics
        # drops its records past the checkpoint.
        self.writer = SummaryWriter(log_dir=str(output / "tensorboard"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a TensorBoard watching the run sees each step

    def log_params(self, params: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        # In the run's own folder (SummaryWriter.add_hparams would start a second run beside it).
        for summary in hparams(flat_params(params), {"train/loss": None}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```json\n" + json.dumps(params, indent=2) + "\n```")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run in experiment `project` (default tuneforge), through MlflowClient (no global run)."""

    STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, config: TrainConfig, output: Path, name: str, resumed_at: int | None):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps the file store behind this switch (it prefers a database); a folder of plain
            # files in the run's output is what offline-first asks for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (output / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        experiment_name = config.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        output_tag = str(output.resolve())
        earlier = None
        if resumed_at is not None:  # continue the run the interrupted attempt started
            quoted = output_tag.replace("'", "\\'")
            found = self.client.search_runs([experiment_id], f"tags.`tuneforge.output` = '{quoted}'",
                                            order_by=["attributes.start_time DESC"], max_results=1)
            earlier = found[0] if found else None
        if earlier is not None:
            self.run_id = earlier.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_params = set(earlier.data.params)  # MLflow refuses to change a logged param
        else:
            run = self.client.create_run(experiment_id, run_name=name,
                                         tags={"tuneforge.output": output_tag, "tuneforge.method": config.method})
            self.run_id, self.logged_params = run.info.run_id, set()

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        new = [Param(key, str(value)) for key, value in flat_params(params).items() if key not in self.logged_params]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS.get(status, "FINISHED"))


class TrackioTracker:
    """A trackio run, local unless TRACKIO_SPACE_ID / trackio's own settings say otherwise; a resumed run
    continues the run of its name. trackio prints its notes to stdout, where `tuneforge train` writes only
    its summary line, so they go to stderr."""

    def __init__(self, config: TrainConfig, output: Path, name: str, resumed_at: int | None):
        import trackio

        self.trackio = trackio  # its module functions: trackio.finish also ends the run its atexit would
        with redirect_stdout(sys.stderr):
            self.run = trackio.init(project=config.project or DEFAULT_PROJECT, name=name,
                                    resume="never" if resumed_at is None else "allow")

    def log(self, values: dict[str, float], step: int) -> None:
        with redirect_stdout(sys.stderr):
            self.trackio.log(values, step=step)

    def log_params(self, params: dict) -> None:
        self.run.config.update(flat_params(params))  # sent with the first logged values

    def close(self, status: str) -> None:
        with redirect_stdout(sys.stderr):
            self.trackio.finish()


class WandbTracker:
    """A W&B run, offline (files in OUTPUT/wandb; `wandb sync` uploads them) unless WANDB_MODE is set."""

    def __init__(self, config: TrainConfig, output: Path, name: str, resumed_at: int | None):
        import wandb

        self.run = wandb.init(
            project=config.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=name,
            dir=os.environ.get("WANDB_DIR") or str(output),
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            tags=[config.method],
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_params(self, params: dict) -> None:
        self.run.config.update(flat_params(params), allow_val_change=True)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "failed" else 0)


BACKENDS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "trackio": TrackioTracker,
            "wandb": WandbTracker}  # in the order of config.TRACKERS (a test checks)
