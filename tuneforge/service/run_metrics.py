"""A run's output, followed into its job: metric events, checkpoint rows, trained tokens, the finish time,
the evaluation and the result files.

The trainer appends one JSON line per train step, validation pass and checkpoint to metrics.jsonl. The
worker tails the file while the trainer runs; each complete line becomes a job event (type "metrics", with
the step's numbers as its data, "Step 12/40") or a checkpoint row, and the steps' pace moves the job's
estimated_finish. After training, `tuneforge compare` writes report/report.json: its headline figures
become the job's `eval`, `forgetting` and `verdict`. On success the metric events become the job's
step_metrics.csv, and the report (HTML and JSON) is stored beside it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.service.file_storage import save_file
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, JobCheckpoint, JobEvent, Org, add_event, new_id, now, update_held_job
from tuneforge.service.trainer_process import last_line

# The report `tuneforge compare` writes into RUN/report (HTML first: the job's report_file); without one,
# the first report a custom training command wrote into the run folder itself.
COMPARE_REPORT = ("report/report.html", "report/report.json")
RUN_REPORTS = ("eval_report.html", "eval_report.md", "eval_report.json", "report.html", "report.md", "report.json")
# What each method's summary.json reports about the trained model, carried onto the job's `eval`.
SUMMARY_FIGURES = ("final_train_loss", "final_valid_loss", "initial_valid_reward", "final_valid_reward",
                   "initial_train_reward", "final_train_reward", "valid_accuracy", "final_valid_accuracy",
                   "valid_reward_accuracy", "steps", "total_steps", "train_seconds", "tokens_per_second")
VARIANT_FIGURES = ("n", "exact_match", "json_valid", "json_match", "format_valid", "mean_prompt_tokens",
                   "latency_p50_s", "batch_seconds_per_answer")
FORGETTING_FIGURES = ("perplexity_change_pct", "mean_kl", "answer_agreement", "base_general_correct",
                      "tuned_general_correct", "general_drop_points", "max_forgetting_pct",
                      "max_general_drop_points", "passed")
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
        self.estimated_finish = None
        # The pace of this run's steps: (step, time) of the first step it saw and of the latest.
        self.first_seen: tuple[int, float] | None = None
        self.last_seen: tuple[int, float] | None = None

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
        values = {}
        if self.trained_tokens is not None:
            values["trained_tokens"] = self.trained_tokens
        if self.estimated_finish is not None:
            values["estimated_finish"] = self.estimated_finish
        if values:
            update_held_job(session, job_id=self.job_id, worker_id=self.worker_id, **values)
        session.commit()

    def _pace(self, step: int | None, total: int | None) -> None:
        """Move the finish time: the steps left at the pace of the steps this run has taken so far."""
        if not isinstance(step, int) or not isinstance(total, int):
            return
        seen = (step, time.time())
        self.first_seen = self.first_seen or seen
        self.last_seen = seen
        (first_step, first_time), (last_step, last_time) = self.first_seen, self.last_seen
        if last_step > first_step:
            seconds_per_step = (last_time - first_time) / (last_step - first_step)
            self.estimated_finish = round(last_time + max(0, total - last_step) * seconds_per_step)

    def _train_step(self, session: Session, record: dict) -> None:
        # The trainer says how many steps its run has; a service-wide max_steps is the fallback for older trainers.
        step, total = record.get("step"), record.get("total_steps") or self.total_steps
        self._pace(step, total)
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
        # Each method measures its own: SFT a loss, DPO a loss and preference accuracy, GRPO a held-out reward.
        figures = {k: v for k, v in record.items() if k not in ("type", "step") and isinstance(v, int | float)}
        self.valid_loss = record.get("valid_loss", self.valid_loss)
        shown = ", ".join(f"validation {k.removeprefix('valid_').replace('_', ' ')}={_fmt(v)}" for k, v in figures.items())
        message = f"Step {step}: {shown or 'validation'}"
        add_event(session, self.job_id, message, type="metrics", data={"step": step, **figures})

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


def publish_results(session: Session, settings: Settings, job: Job, run_dir: Path, evaluation: dict | None = None) -> dict:
    """Store a finished run's result files (step metrics, the report as HTML and JSON); returns the values
    that publish them, the evaluation figures and the model on the job."""
    summary = _read_json(run_dir / "summary.json")
    step_metrics = io.BytesIO(step_metrics_csv(session, job.id).encode())
    result_files = [_save_result(session, settings, job, step_metrics, "step_metrics.csv").id]
    reports = [name for name in COMPARE_REPORT if (run_dir / name).exists()]
    reports = reports or [name for name in RUN_REPORTS if (run_dir / name).exists()][:1]
    reports += [name for name in ("run_card.md", "run_card.json") if (run_dir / name).exists()]  # compare writes it
    report_id = None
    for name in reports:
        with open(run_dir / name, "rb") as handle:
            stored = _save_result(session, settings, job, handle, Path(name).name)
        result_files.append(stored.id)
        report_id = report_id or stored.id
    values = {"fine_tuned_model": job.ft_name, "result_files": result_files, "report_file": report_id}
    if summary.get("trained_tokens") is not None:
        values["trained_tokens"] = int(summary["trained_tokens"])
    figures = {key: summary[key] for key in SUMMARY_FIGURES if summary.get(key) is not None}
    values["evaluation"] = {**(evaluation or {}), "training": figures}
    return values


def evaluation_summary(run_dir: Path, exit_code: int | None, log_path: Path) -> dict:
    """The job's headline figures from the comparison's report.json: the task per variant (zero-shot, few-shot,
    fine-tuned), forgetting with its gate, the verdict. `error` says why there are none."""
    report = _read_json(run_dir / "report" / "report.json")
    if not report or exit_code not in (0, 1):  # 1: the report was written, and the gate failed
        return {"error": f"the comparison did not finish (exit {exit_code}): {last_line(log_path)}", "passed": None}
    variants = report.get("variants") or {}
    task = None
    if variants:
        task = {"n": report.get("n"), "shots": report.get("shots"),
                **{name: {k: v[k] for k in VARIANT_FIGURES if v.get(k) is not None} for name, v in variants.items()}}
    forgetting = report.get("forgetting")
    if forgetting:
        following = forgetting.get("instruction_following") or {}
        forgetting = {k: forgetting[k] for k in FORGETTING_FIGURES if k in forgetting} | (
            {"instructions_base_strict": following.get("base_strict"), "instructions_tuned_strict": following.get("tuned_strict")}
            if following else {})
    return {"eval": task, "forgetting": forgetting, "verdict": report.get("verdict"), "passed": report.get("passed")}


def forgetting_policy(session: Session, settings: Settings, job: Job) -> str:
    """Publish or block a fine-tune that failed the forgetting gate: the organisation's policy when it set one,
    else the job's own `on_forgetting_failure`, else the server's."""
    org = session.get(Org, job.org_id)
    return (org.forgetting_policy if org else None) or (job.options or {}).get("on_forgetting_failure") or (
        settings.forgetting_policy)


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
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
