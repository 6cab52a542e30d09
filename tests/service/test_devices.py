"""GPU placement without GPUs: which devices each worker, trainer and inference process is given, read from
real children that record their CUDA_VISIBLE_DEVICES; and when a job's processes are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
from conftest import HERE, ROOT, chat_rows, fake_env, wait_for, write_jsonl

from tuneforge.service.devices import (
    check_processes,
    nproc_args,
    parse_gpus,
    split_devices,
    trainer_env,
    visible_gpus,
    worker_devices,
)
from tuneforge.service.settings import Settings

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


def settings_with(**values) -> Settings:
    settings = Settings()
    for key, value in values.items():
        setattr(settings, key, value)
    return settings


def test_parse_gpus():
    assert parse_gpus("0,1") == ("0", "1")
    assert parse_gpus(" GPU-8f6a-01 , 3 ") == ("GPU-8f6a-01", "3")
    assert parse_gpus("none") == ()
    for bad in ("0,,1", "a", "0,0", "-1"):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)


def test_split_named_gpus_one_per_worker_by_default():
    assert split_devices(settings_with(gpus=("0", "1", "2")), 2) == (
        [["0"], ["1"]],
        "GPU(s) 2 not given to any worker (--workers / --gpus-per-worker)",
    )
    assert split_devices(settings_with(gpus=("0", "1", "2", "3"), gpus_per_worker=2), 2) == (
        [["0", "1"], ["2", "3"]],
        None,
    )
    with pytest.raises(ValueError, match="3 workers x 1 GPU"):
        split_devices(settings_with(gpus=("0", "1")), 3)
    # none: every worker is CPU only (CUDA_VISIBLE_DEVICES="")
    assert split_devices(settings_with(gpus=()), 2) == ([[], []], None)


def test_found_gpus_are_shared_when_too_few(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert visible_gpus() == ["4", "5"]
    shares, note = split_devices(settings_with(), 3)
    assert shares == [["4"], ["5"], ["4"]] and "share" in note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert split_devices(settings_with(), 2) == (None, None)  # nothing found: workers inherit as before
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")
    assert worker_devices(settings_with()) == ["1"]  # CUDA ignores everything from an invalid entry on


def test_check_processes_and_the_trainer_arguments():
    assert check_processes(2, ["0", "1"]) is None
    refusal = check_processes(3, ["0", "1"])
    assert "3 processes" in refusal and "2 GPU(s) (0,1)" in refusal
    assert check_processes(1, []) is None
    assert "no GPU" in check_processes(2, [], max_cpu_processes=1)
    assert check_processes(2, [], max_cpu_processes=2) is None
    assert check_processes(0, ["0"]) is not None
    assert nproc_args(1) == [] and nproc_args(4) == ["--nproc", "4"]
    assert trainer_env([]) == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def recording_env(log, **extra) -> dict:
    env = fake_env(**extra)
    wrap = [sys.executable, str(HERE / "env_recorder.py"), str(log)]
    env["TUNEFORGE_TRAIN_COMMAND"] = json.dumps([*wrap, *json.loads(env["TUNEFORGE_TRAIN_COMMAND"])])
    env["TUNEFORGE_INFERENCE_COMMAND"] = json.dumps([*wrap, *json.loads(env["TUNEFORGE_INFERENCE_COMMAND"])])
    return env


def records(log, command: str) -> list[dict]:
    if not log.exists():
        return []
    return [row for row in map(json.loads, log.read_text().splitlines()) if row["command"] == command]


SLOW_ROWS = [*chat_rows(3), {"messages": [{"role": "user", "content": "SLOW"}, {"role": "assistant", "content": "ok"}]}]


def test_serve_gives_each_worker_and_the_inference_process_its_gpu(start_server, tmp_path):
    log = tmp_path / "devices.jsonl"
    # The environment's spelling of `serve --gpus 0,1 --inference-gpu 2` (start_server passes no extra flags).
    server = start_server(workers=2, env=recording_env(log, TUNEFORGE_GPUS="0,1", TUNEFORGE_INFERENCE_GPU="2"))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"))
    training = client.files.create(file=write_jsonl(tmp_path / "slow.jsonl", SLOW_ROWS).open("rb"), purpose="fine-tune")
    jobs = [client.fine_tuning.jobs.create(model=BASE, training_file=training.id) for _ in range(2)]
    wait_for(lambda: len(records(log, "fake_trainer.py")) == 2, timeout=60)
    for job in jobs:
        client.fine_tuning.jobs.cancel(job.id)
    trainers = records(log, "fake_trainer.py")
    assert sorted(row["CUDA_VISIBLE_DEVICES"] for row in trainers) == ["0", "1"]  # one GPU each, not both on 0
    assert {row["CUDA_DEVICE_ORDER"] for row in trainers} == {"PCI_BUS_ID"}

    client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])
    assert [row["CUDA_VISIBLE_DEVICES"] for row in records(log, "fake_inference.py")] == ["2"]


def test_a_worker_given_gpus_passes_them_to_its_trainer(start_server, tmp_path):
    log = tmp_path / "devices.jsonl"
    server = start_server(workers=0, env=recording_env(log))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"))
    training = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    worker = [
        sys.executable,
        "-m",
        "tuneforge.service",
        "worker",
        "--once",
        "--gpus",
        "3",
        "--data-dir",
        str(server.data_dir),
    ]
    done = subprocess.run(worker, env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert [row["CUDA_VISIBLE_DEVICES"] for row in records(log, "fake_trainer.py")] == ["3"]


def test_serve_refuses_more_workers_than_named_gpus(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneforge.service",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--workers",
            "3",
            "--gpus",
            "0,1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 2 and "3 workers x 1 GPU(s) each need 3 GPUs" in done.stderr
