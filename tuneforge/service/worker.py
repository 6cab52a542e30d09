"""tuneforge worker [--data-dir DIR] [--database-url URL] [--once]: claims fine-tuning jobs from the store and
runs them, one at a time (`tuneforge serve` starts embedded ones).

For each job: validate its files and time two training steps (file_validation.py: the job's estimated_finish),
run `tuneforge train ... --save-every N --resume auto` (training_command.py) as a child process in
RUNS/<job id> (trainer_process.py), follow its metrics.jsonl into events, checkpoints and a finish time that
moves with the steps (run_metrics.py), keep the job's lease alive, and stop the trainer with SIGTERM when the
job is cancelled or paused. Then `tuneforge compare` measures the fine-tune as a user would (held-out task
against the base zero- and few-shot, forgetting with its gate); the report and its headline figures go on the
job, and a fine-tune that fails the gate is published or not as the organisation chose (run_metrics.py). A job taken over from
a dead worker (its lease ran out) continues from the run's last complete checkpoint; after `max_attempts`
such takeovers it fails instead of crashing workers forever. Many workers (on many machines, with
PostgreSQL) can share one store: each job is claimed by exactly one of them, and every change a worker makes
to a job it holds goes through store.update_held_job, so it lands only while the worker still holds it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
import uuid
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tuneforge.service.devices import check_processes, worker_devices
from tuneforge.service.file_validation import check_job_files, measure_estimate
from tuneforge.service.integrations import integration_env
from tuneforge.service.run_metrics import (
    MetricsRecorder,
    MetricsTail,
    evaluation_summary,
    forgetting_policy,
    publish_results,
)
from tuneforge.service.settings import Settings
from tuneforge.service.store import (
    Job,
    JobCheckpoint,
    JobEvent,
    add_event,
    claim_job,
    make_engine,
    make_sessionmaker,
    now,
    renew_lease,
    update_held_job,
)
from tuneforge.service.trainer_process import Trainer, prepare_run_dir
from tuneforge.service.training_command import compare_command, parent_weights, resolve_hyperparameters, train_command
from tuneforge.service.webhooks import record_job_event

ACTIVE_STATUSES = ("validating_files", "queued", "running")


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
        finished = update_held_job(
            session,
            job_id=job.id,
            worker_id=self.worker_id,
            statuses=ACTIVE_STATUSES,
            release_lease=True,
            status=status,
            error=error,
            finished_at=now(),
            **values,
        )
        if finished:  # the webhook event commits with the final state, or neither does (webhooks.py)
            record_job_event(session, job, status)
        session.commit()
        return finished

    def _release(self, session: Session, job: Job, **values) -> None:
        update_held_job(session, job_id=job.id, worker_id=self.worker_id, release_lease=True, **values)
        session.commit()

    def _validate(self, session: Session, job: Job) -> bool:
        add_event(session, job.id, f"Validating training file: {job.training_file}")
        session.commit()
        n_examples, error = check_job_files(self.settings, job)
        if error is not None:
            self._fail(session, job, error)
            return False
        hyperparameters = resolve_hyperparameters(job.hyperparameters or {}, n_examples)
        estimate = measure_estimate(self.settings, job, hyperparameters)
        seconds = estimate["train_seconds"] if estimate else None
        queued = update_held_job(
            session,
            job_id=job.id,
            worker_id=self.worker_id,
            statuses=("validating_files",),
            status="queued",
            hyperparameters=hyperparameters,
            estimated_finish=now() + round(seconds) if seconds is not None else None,
        )
        if not queued:  # cancelled (or taken over) while we validated
            self._release(session, job)
            return False
        add_event(session, job.id, "Files validated, moving job to queued state")
        if estimate is not None:
            add_event(
                session,
                job.id,
                f"Estimated training time: {seconds / 60:.1f} min on {estimate.get('device')}/{estimate.get('dtype')} "
                f"(two steps timed, {estimate.get('seconds_per_token', 0) * 1000:.2f} ms/token)",
                data=estimate,
            )
        session.commit()
        session.refresh(job)
        return True

    def _fail(self, session: Session, job: Job, error: dict) -> None:
        if self._finish(session, job, "failed", error=error):
            add_event(session, job.id, f"Fine-tuning job failed: {error['message']}", level="error")
            session.commit()

    def _train(self, session: Session, job: Job) -> None:
        run_dir = self.settings.runs_dir / job.id
        restarted = job.status == "running" or job.attempts > 1
        resume_step = prepare_run_dir(run_dir)
        # Events and checkpoint rows are rebuilt from the (trimmed) metrics.jsonl as the watcher tails it.
        session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
        session.execute(delete(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics"))
        running = update_held_job(
            session, job_id=job.id, worker_id=self.worker_id, statuses=("queued", "running"), status="running"
        )
        if not running:
            self._release(session, job)
            return
        if resume_step is not None:
            message = f"Fine-tuning job resumed from the checkpoint at step {resume_step} (attempt {job.attempts})"
        else:
            message = "Fine-tuning job restarted" if restarted else "Fine-tuning job started"
        add_event(session, job.id, message)
        session.commit()

        parent = parent_weights(self.settings, job)
        if parent is not None and not parent.is_dir():
            self._fail(session, job, {"code": "invalid_model", "param": "model", "message": f"The model {job.model} "
                                      "this job continues is gone (deleted, or a checkpoint pruned since the job was "
                                      "created)."})
            return
        n_processes = int((job.options or {}).get("n_processes", 1))
        refusal = check_processes(n_processes, worker_devices(self.settings),
                                  max_cpu_processes=self.settings.max_cpu_processes)
        if refusal is not None:
            self._fail(session, job, {"code": "insufficient_devices", "param": "tuneforge.n_processes",
                                      "message": f"This worker cannot run the job: {refusal}."})
            return
        env = dict(os.environ, **integration_env(job.integrations or []))
        command = train_command(self.settings, job, run_dir, n_processes=n_processes)
        trainer = Trainer(command, run_dir, env=env)
        stop_reason = self._watch(session, job, trainer, run_dir)
        failure = trainer.failure() if stop_reason == "exited" else None
        evaluation = None
        if stop_reason == "exited" and failure is None:
            evaluation, stop_reason = self._evaluate(session, job, run_dir)
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
        if failure is None:
            self._succeed(session, job, run_dir, evaluation)
        else:
            self._fail(session, job, failure)

    def _evaluate(self, session: Session, job: Job, run_dir: Path) -> tuple[dict | None, str]:
        """`tuneforge compare` on the trained run; (the job's evaluation figures or None, why it ended)."""
        command = compare_command(self.settings, job, run_dir)
        if command is None:
            return None, "exited"
        add_event(session, job.id, "Evaluating the fine-tuned model: held-out task against the base model, and "
                  "forgetting")
        session.commit()
        evaluator = Trainer(command, run_dir, log_name="compare.log")
        reason = self._watch(session, job, evaluator, None)
        if reason != "exited":
            return None, reason
        evaluation = evaluation_summary(run_dir, evaluator.process.returncode, evaluator.log_path)
        level = "warn" if evaluation.get("error") or evaluation.get("passed") is False else "info"
        message = f"Evaluation: {evaluation['verdict']}" if evaluation.get("verdict") else (
            f"Evaluation failed: {evaluation.get('error')}")
        add_event(session, job.id, message, level=level, type="message", data=evaluation)
        session.commit()
        return evaluation, "exited"

    def _watch(self, session: Session, job: Job, trainer: Trainer, run_dir: Path | None) -> str:
        """Until the child exits: tail metrics (run_dir None: none to tail), renew the lease, obey
        cancel/pause. Returns why it ended."""
        tail = MetricsTail(run_dir / "metrics.jsonl") if run_dir is not None else None
        recorder = MetricsRecorder(job_id=job.id, worker_id=self.worker_id, total_steps=self.settings.max_steps)
        reason = "exited"
        while True:
            exited = trainer.exited()
            if tail is not None:
                recorder.record(session, tail.read())
            if exited:
                break
            current = renew_lease(session, job.id, self.worker_id, self.settings.lease_seconds)
            if current is None:
                reason = "lost"
            elif current.status in ("cancelled", "paused"):
                reason = current.status
            elif self.stopping or not self._parent_alive():
                reason = "shutdown"
            if reason != "exited":
                trainer.stop()
            time.sleep(0.5)
        return reason

    def _succeed(self, session: Session, job: Job, run_dir: Path, evaluation: dict | None) -> None:
        results = publish_results(session, self.settings, job, run_dir, evaluation)
        if evaluation and evaluation.get("passed") is False:
            policy = forgetting_policy(session, self.settings, job)
            if policy == "block":
                results.pop("fine_tuned_model")
                error = {
                    "code": "forgetting_gate_failed",
                    "param": None,
                    "message": f"The fine-tune forgot general ability and was not published (organisation policy: "
                    f"block): {evaluation.get('verdict')}. The report is in the job's result files.",
                }
                if self._finish(session, job, "failed", error=error, **results):
                    add_event(session, job.id, f"Fine-tuning job failed: {error['message']}", level="error")
                    session.commit()
                return
            add_event(session, job.id, "The fine-tune FAILED the forgetting gate; published anyway (organisation "
                      "policy: publish)", level="warn")
        if self._finish(session, job, "succeeded", **results):
            add_event(session, job.id, f"New fine-tuned model created: {job.ft_name}")
            add_event(session, job.id, "The job has successfully completed")
            session.commit()


def run_worker(settings: Settings, once: bool = False) -> int:
    return Worker(settings).run(once=once)


if __name__ == "__main__":
    sys.exit(run_worker(Settings.from_env()))
