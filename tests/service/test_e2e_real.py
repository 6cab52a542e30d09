"""The done-when flow once with the real trainer, validator and embedded model: upload -> create ->
succeeded -> chat with the ft: model (plain and streamed) -> a bad file fails naming its line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT, fake_env
from test_flow import run_flow

pytestmark = [pytest.mark.service, pytest.mark.e2e]

NEEDED = ("tuneforge.__main__", "tuneforge.models", "tuneforge.evaluate.generation")


def test_real_training_and_chat_through_the_sdk(start_server, tmp_path):
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the trainer/model code is not in this tree yet: {', '.join(missing)}")
    for verb in ("train", "validate"):
        probe = subprocess.run([sys.executable, "-m", "tuneforge", verb, "--help"], capture_output=True, cwd=ROOT)
        if probe.returncode != 0:
            pytest.skip(f"`tuneforge {verb}` is not in this tree yet")
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
