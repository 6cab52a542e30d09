"""The done-when flow once with the real trainer, validator and embedded model: upload -> create ->
succeeded -> chat with the ft: model (plain and streamed) -> a bad file fails naming its line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, fake_env
from test_flow import run_flow

pytestmark = [pytest.mark.service, pytest.mark.e2e]

def test_real_training_and_chat_through_the_sdk(start_server, tmp_path):
    for verb in ("train", "validate"):  # the verbs the worker runs: a broken one fails here, with its message
        probe = subprocess.run([sys.executable, "-m", "tuneforge", verb, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert probe.returncode == 0, f"`tuneforge {verb} --help` failed: {probe.stderr[-2000:]}"
    env = {k: v for k, v in fake_env().items() if k.startswith("TUNEFORGE_") and "COMMAND" not in k}
    # Two steps: on a busy 2-core box one LoRA step of the embedded model can take tens of seconds.
    env.update(TUNEFORGE_MAX_STEPS="2", TUNEFORGE_SAVE_EVERY="1", TUNEFORGE_LEASE_SECONDS="60")
    server = start_server(workers=1, env=env)
    seen = run_flow(
        server, server.create_key("acme"), tmp_path / "work", "3", ["--real", "--skip-cancel", "--timeout", "480"]
    )
    assert seen["reply"].strip()
    run_dir = next((server.data_dir / "runs").iterdir())
    assert (run_dir / "adapter_config.json").exists() and (run_dir / "summary.json").exists()
