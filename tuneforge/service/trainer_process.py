"""`tuneforge train ... --resume auto` as the worker's child process: its run folder, start, stop and exit.

A job's run folder (RUNS/<job id>) outlives the worker, so a worker that takes a job over prepares it to
continue from the newest complete checkpoint. The trainer writes its output to train.log, dies with its
worker (Linux), finishes its step and saves on SIGTERM, and is killed if it has not exited a grace period
later. Its exit code says how the run ended: 0 done, 2 the user's input was refused, anything else a crash.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from tuneforge.runfiles import complete_checkpoints, trim_metrics

TERM_GRACE_SECONDS = 20


def prepare_run_dir(run_dir: Path) -> int | None:
    """The step the trainer will resume from (None: a clean start, and an emptied folder)."""
    checkpoints = complete_checkpoints(run_dir)
    resume_step = int(checkpoints[-1].name.removeprefix("step-")) if checkpoints else None
    if resume_step is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:  # the log keeps only what led up to the checkpoint
        trim_metrics(run_dir / "metrics.jsonl", resume_step)
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume_step


class Trainer:
    """A running `tuneforge train` (or, after it, `tuneforge compare`) child, with its output in
    run_dir/train.log (compare.log)."""

    def __init__(self, command: list[str], run_dir: Path, *, log_name: str = "train.log", env: dict | None = None):
        self.log_path = run_dir / log_name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                env=env,
            )
        self.term_sent_at: float | None = None

    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        """Ask the trainer to save and exit; called again after the grace period, kill it."""
        if self.term_sent_at is None:
            self.process.send_signal(signal.SIGTERM)  # the trainer finishes its step, saves and exits
            self.term_sent_at = time.monotonic()
        elif time.monotonic() - self.term_sent_at > TERM_GRACE_SECONDS:
            self.process.kill()

    def failure(self) -> dict | None:
        """The job's error for how the trainer exited; None when it succeeded."""
        code = self.process.returncode
        if code == 0:
            return None
        if code == 2:  # the trainer's usage / input error: its last line says what to fix
            return {"code": "invalid_request", "param": None, "message": last_line(self.log_path)}
        message = f"Training crashed (exit {code}): {last_line(self.log_path)}"
        return {"code": "training_failed", "param": None, "message": message}


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so no trainer outlives its worker (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:500] if lines else "no output"
