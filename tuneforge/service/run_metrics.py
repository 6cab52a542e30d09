"""A run's output, followed into its job: metric events, checkpoint rows, trained tokens, result files.

The trainer appends one JSON line per train step, validation pass and checkpoint to metrics.jsonl. The
worker tails the file while the trainer runs; each complete line becomes a job event (type "metrics", with
the step's numbers as its data) or a checkpoint row. On success the metric events become the job's
step_metrics.csv, and the run's evaluation report (when it wrote one) is stored beside it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.service.file_storage import save_file
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, JobCheckpoint, JobEvent, add_event, new_id, now, update_held_job

REPORT_NAMES = ("eval_report.html", "eval_report.md", "eval_report.json", "report.html", "report.md", "report.json")
STEP_METRICS_COLUMNS = ("step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "trained_tokens")


class MetricsTail:
    """Reads the complete lines appended to metrics.jsonl since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


class MetricsRecorder:
    """Writes one run's metrics records into its job, remembering the latest losses for checkpoint rows."""

    def __init__(self, *, job_id: str, worker_id: str, total_steps: int | None):
        self.job_id = job_id
        self.worker_id = worker_id
        self.total_steps = total_steps
        self.train_loss = None
        self.valid_loss = None
        self.trained_tokens = None

    def record(self, session: Session, records: list[dict]) -> None:
        """Events and checkpoint rows for these records, and the job's trained tokens so far. Commits."""
        if not records:
            return
        for record in records:
            kind = record.get("type")
            if kind == "train":
                self._train_step(session, record)
            elif kind == "valid":
                self._validation(session, record)
            elif kind == "checkpoint":
                self._checkpoint(session, record)
        if self.trained_tokens is not None:
            update_held_job(session, job_id=self.job_id, worker_id=self.worker_id, trained_tokens=self.trained_tokens)
        session.commit()

    def _train_step(self, session: Session, record: dict) -> None:
        step, total = record.get("step"), self.total_steps
        self.train_loss = record.get("loss")
        self.trained_tokens = record.get("trained_tokens", self.trained_tokens)
        data = {
            "step": step,
            "train_loss": record.get("loss"),
            "epoch": record.get("epoch"),
            "learning_rate": record.get("lr"),
            "tokens_per_second": record.get("tokens_per_second"),
            "trained_tokens": record.get("trained_tokens"),
            "total_steps": total,
        }
        steps = f"{step}/{total}" if total else f"{step}"
        message = f"Step {steps}: training loss={_fmt(record.get('loss'))}"
        add_event(session, self.job_id, message, type="metrics", data=data)

    def _validation(self, session: Session, record: dict) -> None:
        step = record.get("step")
        self.valid_loss = record.get("valid_loss")
        message = f"Step {step}: validation loss={_fmt(self.valid_loss)}"
        add_event(session, self.job_id, message, type="metrics", data={"step": step, "valid_loss": self.valid_loss})

    def _checkpoint(self, session: Session, record: dict) -> None:
        step = record.get("step")
        session.add(
            JobCheckpoint(
                id=new_id("ftckpt"),
                job_id=self.job_id,
                step_number=int(step or 0),
                path=str(record.get("path", "")),
                metrics={"step": step, "train_loss": self.train_loss, "valid_loss": self.valid_loss},
                created_at=now(),
            )
        )
        add_event(session, self.job_id, f"Checkpoint created at step {step}")


def publish_results(session: Session, settings: Settings, job: Job, run_dir: Path) -> dict:
    """Store a finished run's result files; returns the values that publish them (and the model) on the job."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    step_metrics = io.BytesIO(step_metrics_csv(session, job.id).encode())
    result_files = [_save_result(session, settings, job, step_metrics, "step_metrics.csv").id]
    report_id = None
    for name in REPORT_NAMES:
        if (run_dir / name).exists():
            with open(run_dir / name, "rb") as handle:
                report_id = _save_result(session, settings, job, handle, name).id
            break
    values = {"fine_tuned_model": job.ft_name, "result_files": result_files, "report_file": report_id}
    if summary.get("trained_tokens") is not None:
        values["trained_tokens"] = int(summary["trained_tokens"])
    return values


def step_metrics_csv(session: Session, job_id: str) -> str:
    """OpenAI-style step metrics (one row per step) from the job's metric events."""
    rows: dict[int, dict] = {}
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.seq)
    ).all()
    for event in events:
        data = event.data or {}
        step = int(data.get("step") or 0)
        row = rows.setdefault(step, {"step": step})
        for key in STEP_METRICS_COLUMNS[1:]:
            if data.get(key) is not None:
                row[key] = data[key]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=STEP_METRICS_COLUMNS)
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return text.getvalue()


def _save_result(session: Session, settings: Settings, job: Job, source, filename: str):
    return save_file(
        session, settings, org_id=job.org_id, source=source, filename=filename, purpose="fine-tune-results"
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)
