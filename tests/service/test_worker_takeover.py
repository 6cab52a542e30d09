"""A worker killed with SIGKILL mid-job: its lease runs out, another worker takes the job over and continues
from the run's last complete checkpoint (attempt 2, resumed, not restarted); after max_attempts it fails."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import openai
import pytest
from conftest import ROOT, chat_rows, fake_env, wait_for, write_jsonl

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


def start_worker(server) -> subprocess.Popen:
    """A separate `tuneforge worker` in its own process group (SIGKILL to the group takes its trainer too)."""
    command = [sys.executable, "-m", "tuneforge.service", "worker", "--data-dir", str(server.data_dir)]
    return subprocess.Popen(command, env=server.env, cwd=ROOT, start_new_session=True)


def kill_9(worker: subprocess.Popen) -> None:
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)


def attempts(server, job_id: str) -> int:
    with sqlite3.connect(server.data_dir / "tuneforge.db") as db:
        return db.execute("select attempts from jobs where id = ?", (job_id,)).fetchone()[0]


def kill_worker_after_a_checkpoint(start_server, tmp_path, **env):
    run_log = tmp_path / "runs.log"
    server = start_server(workers=0, env=fake_env(FAKE_RUN_LOG=str(run_log), FAKE_STEP_SECONDS="0.4", **env))
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0)
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    first = start_worker(server)
    try:
        # Checkpoints come every 2 steps (TUNEFORGE_SAVE_EVERY=2); kill once step 3 has been logged.
        wait_for(lambda: any((e.data or {}).get("step", 0) >= 3 for e in sdk.fine_tuning.jobs.list_events(job.id)), 60)
    finally:
        kill_9(first)
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "running"  # still leased to the dead worker
    return server, sdk, job, run_log


def test_killed_worker_job_is_taken_over_and_resumed_from_its_checkpoint(start_server, tmp_path):
    server, sdk, job, run_log = kill_worker_after_a_checkpoint(start_server, tmp_path)
    second = start_worker(server)
    try:
        done = wait_for(
            lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j, 60
        )
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert done.status == "succeeded", done.error
    assert attempts(server, job.id) == 2
    runs = [line.split() for line in run_log.read_text().splitlines()]
    assert [r[0] for r in runs] == [job.id, job.id]
    assert runs[0][2] == "1" and int(runs[1][2]) >= 3  # the second run started after a checkpoint, not at step 1
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(
        m.startswith("Fine-tuning job resumed from the checkpoint at step") and "attempt 2" in m for m in messages
    )
    # The events read as one run: each train step once.
    steps = [
        e.data["step"]
        for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)
        if e.type == "metrics" and "train_loss" in (e.data or {})
    ]
    assert sorted(steps) == list(range(1, 7))


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(start_server, tmp_path):
    server, sdk, job, _ = kill_worker_after_a_checkpoint(start_server, tmp_path, TUNEFORGE_MAX_ATTEMPTS="1")
    second = start_worker(server)
    try:
        done = wait_for(
            lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j, 60
        )
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert done.status == "failed"
    assert done.error.code == "max_attempts_exceeded" and "1 attempts" in done.error.message
