"""tuneforge worker: claims fine-tuning jobs from the store and runs them, one at a time.

For each job: validate the files (`tuneforge validate FILE --json`), run `tuneforge train ... --save-every N
--resume auto` as a child process in RUNS/<job id>, tail its metrics.jsonl into events and checkpoints, keep
the job's lease alive, and stop the trainer with SIGTERM when the job is cancelled or paused. A job taken
over from a dead worker (its lease ran out) continues from the run's last complete checkpoint; after
`max_attempts` such takeovers it fails instead of crashing workers forever. Many workers (on many machines, with
PostgreSQL) can share one store: each job is claimed by exactly one of them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tuneforge.runfiles import complete_checkpoints, trim_metrics
from tuneforge.service.routes.files import file_path, save_file
from tuneforge.service.settings import Settings
from tuneforge.service.store import (
    Job,
    JobCheckpoint,
    JobEvent,
    add_event,
    claim_job,
    make_engine,
    make_sessionmaker,
    new_id,
    now,
    renew_lease,
)

BASE_LEARNING_RATE = 1e-3  # the trainer's LoRA default; learning_rate_multiplier scales it
TERM_GRACE_SECONDS = 20
REPORT_NAMES = ("eval_report.html", "eval_report.md", "eval_report.json", "report.html", "report.md", "report.json")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so no trainer outlives its worker (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def resolve_hyperparameters(hyper: dict, n_examples: int | None) -> dict:
    """Replace "auto" with the values the run will use (reported back on the job, as OpenAI does)."""
    resolved = dict(hyper)
    if resolved.get("n_epochs", "auto") == "auto":
        resolved["n_epochs"] = 3
    if resolved.get("batch_size", "auto") == "auto":
        resolved["batch_size"] = max(1, min(8, (n_examples or 1) // 32))
    if resolved.get("learning_rate_multiplier", "auto") == "auto":
        resolved["learning_rate_multiplier"] = 1.0
    if "beta" in resolved and resolved["beta"] == "auto":
        resolved["beta"] = 0.1
    return resolved


def validation_error(report: dict, param: str) -> dict:
    errors = report.get("errors") or []
    if not errors:
        return {"code": "invalid_file", "message": f"The {param} could not be validated.", "param": param}
    first = errors[0]
    more = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return {
        "code": "invalid_training_file" if param == "training_file" else "invalid_validation_file",
        "message": f"Invalid file format in {param}: line {first.get('line')}: {first.get('message')} "
        f"[{first.get('code')}]{more}",
        "param": param,
    }


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


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        settings.ensure_dirs()
        self.engine = make_engine(settings.url)
        self.sessions = make_sessionmaker(self.engine)
        self.stopping = False
        self.parent_pid = int(os.environ.get("TUNEFORGE_PARENT_PID", "0")) or None

    # --- the loop -------------------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        while not self.stopping and self._parent_alive():
            with self.sessions() as session:
                job = claim_job(session, self.worker_id, self.settings.lease_seconds)
            if job is None:
                if once:
                    return 0
                time.sleep(self.settings.poll_seconds)
                continue
            self.process(job.id)
            if once:
                return 0
        return 0

    def _on_stop(self, _signum, _frame) -> None:
        self.stopping = True

    def _parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    # --- one job --------------------------------------------------------------------------------------

    def process(self, job_id: str) -> None:
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            if job.attempts > self.settings.max_attempts:
                self._fail(
                    session,
                    job,
                    {
                        "code": "max_attempts_exceeded",
                        "param": None,
                        "message": f"The job's worker died {job.attempts - 1} times; gave up after "
                        f"{self.settings.max_attempts} attempts.",
                    },
                )
                return
            try:
                if job.status == "validating_files":
                    if not self._validate(session, job):
                        return
                self._train(session, job)
            except Exception as exc:  # a worker bug fails the job loudly instead of retrying it forever
                session.rollback()
                self._finish(
                    session,
                    job,
                    "failed",
                    error={
                        "code": "server_error",
                        "param": None,
                        "message": f"The worker crashed: {type(exc).__name__}: {exc}",
                    },
                )
                traceback.print_exc()

    def _finish(self, session: Session, job: Job, status: str, *, error: dict | None = None, **values) -> bool:
        """Move our running job to a final state unless the user cancelled it meanwhile. Releases the lease."""
        result = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.lease_owner == self.worker_id,
                Job.status.in_(("validating_files", "queued", "running")),
            )
            .values(status=status, error=error, finished_at=now(), lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return result.rowcount == 1

    def _release(self, session: Session, job: Job, **values) -> None:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.lease_owner == self.worker_id)
            .values(lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        session.commit()

    def _validate(self, session: Session, job: Job) -> bool:
        add_event(session, job.id, f"Validating training file: {job.training_file}")
        session.commit()
        method = "dpo" if job.method == "dpo" else "sft"
        n_examples = None
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is None:
                continue
            path = file_path(self.settings, file_id)
            if not path.exists():
                self._fail(
                    session,
                    job,
                    {"code": "invalid_file", "param": param, "message": f"The {param} {file_id} no longer exists."},
                )
                return False
            report, problem = self._run_validator(path, method, min_examples=10 if param == "training_file" else 1)
            if problem:
                self._fail(session, job, {"code": "validation_unavailable", "param": param, "message": problem})
                return False
            if not report.get("ok", False):
                self._fail(session, job, validation_error(report, param))
                return False
            if param == "training_file":
                n_examples = report.get("n_examples")
        hyper = resolve_hyperparameters(job.hyperparameters or {}, n_examples)
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.lease_owner == self.worker_id, Job.status == "validating_files")
            .values(status="queued", hyperparameters=hyper)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # cancelled (or taken over) while we validated
            session.commit()
            self._release(session, job)
            return False
        add_event(session, job.id, "Files validated, moving job to queued state")
        session.commit()
        session.refresh(job)
        return True

    def _run_validator(self, path: Path, method: str, min_examples: int) -> tuple[dict, str | None]:
        command = [*self.settings.validate_command, str(path), "--json", "--no-estimate", "--method", method,
                   "--min-examples", str(min_examples)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {}, f"The data validator could not run: {exc}"
        report = _parse_json_report(done.stdout)
        if report is None or done.returncode not in (0, 1):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {}, f"The data validator failed (exit {done.returncode}): {last}"
        return report, None

    def _fail(self, session: Session, job: Job, error: dict) -> None:
        if self._finish(session, job, "failed", error=error):
            add_event(session, job.id, f"Fine-tuning job failed: {error['message']}", level="error")
            session.commit()

    def _train_command(self, job: Job, run_dir: Path) -> list[str]:
        hyper = job.hyperparameters or {}
        command = [
            *self.settings.train_command,
            "--data",
            str(file_path(self.settings, job.training_file)),
            "--output",
            str(run_dir),
            "--method",
            "dpo" if job.method == "dpo" else "sft",
            "--model",
            job.model,
            "--seed",
            str(job.seed),
        ]
        if job.validation_file:
            command += ["--validation-data", str(file_path(self.settings, job.validation_file))]
        if isinstance(hyper.get("n_epochs"), int):
            command += ["--epochs", str(hyper["n_epochs"])]
        if isinstance(hyper.get("batch_size"), int):
            command += ["--batch-size", str(hyper["batch_size"])]
        if isinstance(hyper.get("learning_rate_multiplier"), int | float):
            command += ["--lr", repr(BASE_LEARNING_RATE * float(hyper["learning_rate_multiplier"]))]
        if job.method == "dpo" and isinstance(hyper.get("beta"), int | float):
            command += ["--beta", repr(float(hyper["beta"]))]
        if self.settings.max_steps:
            command += ["--max-steps", str(self.settings.max_steps)]
        # Checkpoints in a run folder that outlives the worker: a takeover continues where the dead one stopped.
        command += ["--save-every", str(self.settings.save_every), "--resume", "auto"]
        return command

    def _train(self, session: Session, job: Job) -> None:
        run_dir = self.settings.runs_dir / job.id
        restarted = job.status == "running" or job.attempts > 1
        checkpoints = complete_checkpoints(run_dir)
        resume_step = int(checkpoints[-1].name.removeprefix("step-")) if checkpoints else None
        if resume_step is None:  # nothing to continue from: start clean
            shutil.rmtree(run_dir, ignore_errors=True)
        else:  # the trainer resumes from this checkpoint; the log keeps only what led up to it
            trim_metrics(run_dir / "metrics.jsonl", resume_step)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Events and checkpoint rows are rebuilt from the (trimmed) metrics.jsonl as the watcher tails it.
        session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
        session.execute(delete(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics"))
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.lease_owner == self.worker_id, Job.status.in_(("queued", "running")))
            .values(status="running")
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.commit()
            self._release(session, job)
            return
        if resume_step is not None:
            message = f"Fine-tuning job resumed from the checkpoint at step {resume_step} (attempt {job.attempts})"
        else:
            message = "Fine-tuning job restarted" if restarted else "Fine-tuning job started"
        add_event(session, job.id, message)
        session.commit()

        log_path = run_dir / "train.log"
        with open(log_path, "wb") as log:
            trainer = subprocess.Popen(
                self._train_command(job, run_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        stop_reason = self._watch(session, job, trainer, run_dir)
        if stop_reason == "lost":
            return
        if stop_reason in ("cancelled", "paused", "shutdown"):
            # A job handed back on purpose does not use up one of its attempts.
            if stop_reason == "shutdown":
                # Hand the job back so the next worker (or this server, restarted) continues it.
                self._release(session, job, status="queued", attempts=Job.attempts - 1)
                add_event(session, job.id, "Worker stopped; job returned to the queue")
                session.commit()
            else:
                self._release(session, job, attempts=Job.attempts - 1)
            return
        if trainer.returncode == 0:
            self._succeed(session, job, run_dir)
        elif trainer.returncode == 2:
            self._fail(session, job, {"code": "invalid_request", "param": None, "message": _last_line(log_path)})
        else:
            self._fail(
                session,
                job,
                {
                    "code": "training_failed",
                    "param": None,
                    "message": f"Training crashed (exit {trainer.returncode}): {_last_line(log_path)}",
                },
            )

    def _watch(self, session: Session, job: Job, trainer: subprocess.Popen, run_dir: Path) -> str:
        """Until the trainer exits: tail metrics, renew the lease, obey cancel/pause. Returns why it ended."""
        tail = MetricsTail(run_dir / "metrics.jsonl")
        state = {"train_loss": None, "valid_loss": None, "trained_tokens": None}
        reason = "exited"
        term_sent_at = None
        while True:
            exited = trainer.poll() is not None
            self._record_metrics(session, job, tail.read(), state)
            if exited:
                break
            current = renew_lease(session, job.id, self.worker_id, self.settings.lease_seconds)
            if current is None:
                reason = "lost"
            elif current.status in ("cancelled", "paused"):
                reason = current.status
            elif self.stopping or not self._parent_alive():
                reason = "shutdown"
            if reason != "exited" and term_sent_at is None:
                trainer.send_signal(signal.SIGTERM)  # the trainer finishes its step, saves and exits
                term_sent_at = time.monotonic()
            if term_sent_at is not None and time.monotonic() - term_sent_at > TERM_GRACE_SECONDS:
                trainer.kill()
            time.sleep(0.5)
        return reason

    def _record_metrics(self, session: Session, job: Job, records: list[dict], state: dict) -> None:
        if not records:
            return
        total = self.settings.max_steps
        for record in records:
            kind = record.get("type")
            step = record.get("step")
            if kind == "train":
                state["train_loss"] = record.get("loss")
                state["trained_tokens"] = record.get("trained_tokens", state["trained_tokens"])
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
                add_event(
                    session,
                    job.id,
                    f"Step {steps}: training loss={_fmt(record.get('loss'))}",
                    type="metrics",
                    data=data,
                )
            elif kind == "valid":
                state["valid_loss"] = record.get("valid_loss")
                add_event(
                    session,
                    job.id,
                    f"Step {step}: validation loss={_fmt(record.get('valid_loss'))}",
                    type="metrics",
                    data={"step": step, "valid_loss": record.get("valid_loss")},
                )
            elif kind == "checkpoint":
                metrics = {"step": step, "train_loss": state["train_loss"], "valid_loss": state["valid_loss"]}
                session.add(
                    JobCheckpoint(
                        id=new_id("ftckpt"),
                        job_id=job.id,
                        step_number=int(step or 0),
                        path=str(record.get("path", "")),
                        metrics=metrics,
                        created_at=now(),
                    )
                )
                add_event(session, job.id, f"Checkpoint created at step {step}")
        if state["trained_tokens"] is not None:
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(trained_tokens=state["trained_tokens"])
                .execution_options(synchronize_session=False)
            )
        session.commit()

    def _succeed(self, session: Session, job: Job, run_dir: Path) -> None:
        summary = {}
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
        results = self._results_csv(session, job)
        result_files = [results.id]
        report_id = None
        for name in REPORT_NAMES:
            if (run_dir / name).exists():
                with open(run_dir / name, "rb") as handle:
                    report_id = save_file(session, self.settings, job.org_id, handle, name, "fine-tune-results").id
                break
        values = {"fine_tuned_model": job.ft_name, "result_files": result_files, "report_file": report_id}
        if summary.get("trained_tokens") is not None:
            values["trained_tokens"] = int(summary["trained_tokens"])
        if self._finish(session, job, "succeeded", **values):
            add_event(session, job.id, f"New fine-tuned model created: {job.ft_name}")
            add_event(session, job.id, "The job has successfully completed")
            session.commit()

    def _results_csv(self, session: Session, job: Job):
        """OpenAI-style step metrics as a CSV file attached to the job (purpose fine-tune-results)."""
        rows: dict[int, dict] = {}
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq)
        ).all()
        for event in events:
            data = event.data or {}
            row = rows.setdefault(int(data.get("step") or 0), {"step": int(data.get("step") or 0)})
            for key in ("train_loss", "valid_loss", "learning_rate", "tokens_per_second", "trained_tokens"):
                if data.get(key) is not None:
                    row[key] = data[key]
        columns = ["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "trained_tokens"]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow(rows[step])
        return save_file(
            session,
            self.settings,
            job.org_id,
            io.BytesIO(text.getvalue().encode()),
            "step_metrics.csv",
            "fine-tune-results",
        )


def _parse_json_report(stdout: str) -> dict | None:
    """The validator prints one JSON object; accept it pretty-printed or after other lines."""
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else "", text[text.find("{") :] if "{" in text else ""):
        try:
            report = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            return report
    return None


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:500] if lines else "no output"


def run_worker(settings: Settings, once: bool = False) -> int:
    return Worker(settings).run(once=once)


if __name__ == "__main__":
    sys.exit(run_worker(Settings.from_env()))
