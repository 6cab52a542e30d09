"""The done-when flow once with the real trainer, validator and embedded model: upload -> create ->
succeeded -> chat with the ft: model (plain and streamed) -> a bad file fails naming its line."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import fake_env
from test_flow import run_flow

pytestmark = [pytest.mark.service, pytest.mark.e2e]

NEEDED = ("tuneforge.__main__", "tuneforge.models", "tuneforge.evaluate.generation")


def test_real_training_and_chat_through_the_sdk(start_server, tmp_path):
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the trainer/model code is not in this tree yet: {', '.join(missing)}")
    env = {k: v for k, v in fake_env().items() if k.startswith("TUNEFORGE_") and "COMMAND" not in k}
    env.update(TUNEFORGE_MAX_STEPS="4", TUNEFORGE_SAVE_EVERY="2", TUNEFORGE_LEASE_SECONDS="30")
    server = start_server(workers=1, env=env)
    seen = run_flow(server, server.create_key("acme"), tmp_path / "work", "3", ["--real", "--skip-cancel"])
    assert seen["reply"].strip()
    run_dir = next((server.data_dir / "runs").iterdir())
    assert (run_dir / "adapter_config.json").exists() and (run_dir / "summary.json").exists()
