"""Done-when flows: the openai SDK (3.x here, 2.x in a separate environment) against a real server on
loopback, on SQLite and on PostgreSQL; many workers claim each job once; a killed server loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from conftest import HERE, ROOT, chat_rows, fake_env, wait_for, write_jsonl

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"
OPENAI2_DIR = Path(os.environ.get("TUNEFORGE_OPENAI2_DIR", Path.home() / ".cache" / "tuneforge-tests" / "openai2"))


def openai2_pythonpath() -> str:
    """A directory holding the last openai 2.x (pip install --target), made on first use."""
    probe = [sys.executable, "-c", "import openai; print(openai.__version__)"]
    env = dict(os.environ, PYTHONPATH=str(OPENAI2_DIR))
    done = subprocess.run(probe, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.startswith("2."):
        install = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(OPENAI2_DIR), "openai>=2,<3"],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            pytest.skip(f"could not install openai 2.x into {OPENAI2_DIR}: {install.stderr.strip()[-300:]}")
        done = subprocess.run(probe, env=env, capture_output=True, text=True)
    assert done.stdout.startswith("2."), done.stdout + done.stderr
    return str(OPENAI2_DIR)


def fresh_database(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def run_flow(server, key: str, workdir: Path, sdk: str, extra: list[str] = ()) -> dict:
    env = dict(os.environ)
    if sdk == "2":
        env["PYTHONPATH"] = openai2_pythonpath()
    command = [sys.executable, str(HERE / "sdk_flow.py"), server.url + "/v1", key, str(workdir), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=workdir.parent)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}\nserver log:\n{server.log.read_text()[-3000:]}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["sdk"].startswith(sdk + ".")
    return seen


@pytest.mark.parametrize("sdk", ["3", "2"])
def test_sdk_flow_on_sqlite(start_server, tmp_path, sdk):
    server = start_server()
    seen = run_flow(server, server.create_key("acme"), tmp_path / "work", sdk)
    assert seen["fine_tuned_model"].startswith(f"ft:{BASE}:acme:flow:")
    assert "line 3" in seen["bad_file_error"]


@pytest.mark.parametrize("sdk", ["3", "2"])
def test_sdk_flow_on_postgres(start_server, postgres_url, tmp_path, sdk):
    server = start_server(workers=2, database_url=fresh_database(postgres_url, f"flow{sdk}"))
    seen = run_flow(server, server.create_key("acme"), tmp_path / "work", sdk)
    assert seen["fine_tuned_model"].startswith(f"ft:{BASE}:acme:flow:")


def _create_jobs(sdk, tmp_path, count: int) -> list[str]:
    training = sdk.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    return [sdk.fine_tuning.jobs.create(model=BASE, training_file=training.id, suffix=f"j{i}").id for i in range(count)]


def test_two_workers_on_postgres_run_each_of_four_jobs_exactly_once(start_server, postgres_url, tmp_path):
    run_log = tmp_path / "runs.log"
    env = fake_env(FAKE_RUN_LOG=str(run_log), FAKE_STEP_SECONDS="0.3")
    database = fresh_database(postgres_url, "four_jobs")
    server = start_server(workers=2, database_url=database, env=env)
    # A third worker process, as on another machine, shares the same database.
    other_machine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneforge.service",
            "worker",
            "--data-dir",
            str(server.data_dir),
            "--database-url",
            database,
        ],
        env={**server.env},
        cwd=ROOT,
    )
    try:
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0)
        job_ids = _create_jobs(sdk, tmp_path, 4)
        jobs = wait_for(
            lambda: (
                (js := [sdk.fine_tuning.jobs.retrieve(j) for j in job_ids])
                and all(j.status == "succeeded" for j in js)
                and js
            ),
            timeout=90,
        )
    finally:
        other_machine.terminate()
        other_machine.wait(timeout=30)
    runs = [line.split()[0] for line in run_log.read_text().splitlines()]
    assert sorted(runs) == sorted(job_ids), runs  # each job ran exactly once
    assert len({j.fine_tuned_model for j in jobs}) == 4


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_killing_the_server_mid_job_loses_no_job_and_no_file(start_server, tmp_path, backend, request):
    database = None
    if backend == "postgres":
        database = fresh_database(request.getfixturevalue("postgres_url"), "kill_restart")
    run_log = tmp_path / "runs.log"
    env = fake_env(FAKE_RUN_LOG=str(run_log), FAKE_STEP_SECONDS="0.5")
    server = start_server(workers=1, database_url=database, env=env)
    key = server.create_key("acme")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    job_ids = _create_jobs(sdk, tmp_path, 2)
    files_before = sorted(f.id for f in sdk.files.list())
    wait_for(lambda: any(e.type == "metrics" for e in sdk.fine_tuning.jobs.list_events(job_ids[0])))

    server.kill()  # SIGKILL: server, worker and trainer all die mid-step
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/healthz", timeout=1)
    restarted = start_server(workers=1, database_url=database, data_dir=server.data_dir, env=env)
    sdk = openai.OpenAI(base_url=restarted.url + "/v1", api_key=key, max_retries=0)
    assert sorted(f.id for f in sdk.files.list()) == files_before
    jobs = wait_for(
        lambda: (
            (js := [sdk.fine_tuning.jobs.retrieve(j) for j in job_ids])
            and all(j.status == "succeeded" for j in js)
            and js
        ),
        timeout=90,
    )
    assert [j.id for j in jobs] == job_ids
    runs = [line.split()[0] for line in run_log.read_text().splitlines()]
    assert runs.count(job_ids[0]) == 2 and runs.count(job_ids[1]) == 1  # the interrupted job ran again
    # It continued from its last checkpoint when one was complete (docs/reliability.md), else started over.
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job_ids[0], limit=100)]
    assert any(m == "Fine-tuning job restarted" or m.startswith("Fine-tuning job resumed from") for m in messages)
    for file_id in files_before:
        assert sdk.files.content(file_id).content == (tmp_path / "t.jsonl").read_bytes()
