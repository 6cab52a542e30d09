"""The done-when flow once with the real trainer, validator and embedded model: upload -> create ->
succeeded -> chat with the ft: model (plain and streamed) -> a bad file fails naming its line."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from conftest import HERE, ROOT, fake_env
from test_flow import run_flow

pytestmark = [pytest.mark.service, pytest.mark.e2e]

def test_real_training_and_chat_through_the_sdk(start_server, tmp_path):
    for verb in ("train", "validate"):  # the verbs the worker runs: a broken one fails here, with its message
        probe = subprocess.run([sys.executable, "-m", "tuneforge", verb, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert probe.returncode == 0, f"`tuneforge {verb} --help` failed: {probe.stderr[-2000:]}"
    env = {k: v for k, v in fake_env().items() if k.startswith("TUNEFORGE_") and "COMMAND" not in k}
    # Two steps: on a busy 2-core box one LoRA step of the embedded model can take tens of seconds.
    env.update(TUNEFORGE_MAX_STEPS="2", TUNEFORGE_SAVE_EVERY="1", TUNEFORGE_LEASE_SECONDS="60")
    # The real comparison and report after training, without the minutes-long forgetting measurement.
    env["TUNEFORGE_COMPARE_COMMAND"] = json.dumps([sys.executable, str(HERE / "compare_task_only.py")])
    server = start_server(workers=1, env=env)
    seen = run_flow(
        server, server.create_key("acme"), tmp_path / "work", "3", ["--real", "--skip-cancel", "--timeout", "480"]
    )
    assert seen["reply"].strip()
    key = server.create_key("acme")
    jobs = httpx.get(f"{server.url}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    job = next(j for j in jobs if j["status"] == "succeeded")
    run_dir = server.data_dir / "runs" / job["id"]
    assert (run_dir / "adapter_config.json").exists() and (run_dir / "summary.json").exists()
    # What the worker ran after training: the comparison on the validation file, published as the report.
    assert job["report_file"] in job["result_files"] and (run_dir / "report" / "report.html").exists()
    assert set(job["eval"]) >= {"zero_shot", "fine_tuned"} and job["eval"]["n"] == 3
    assert job["verdict"].startswith("fine-tuned:") and job["training_metrics"]["steps"] == 2
    estimates = [e for e in httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job['id']}/events?limit=100",
                                      headers={"Authorization": f"Bearer {key}"}).json()["data"]
                 if e["message"].startswith("Estimated training time")]
    assert estimates and estimates[0]["data"]["train_seconds"] > 0  # two real steps timed by the validator
