"""`tuneforge validate --estimate` on the demo data with the real embedded model: clean report, auto epochs, a
measured estimate of the run `train` would do (3 epochs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_validate_support_tickets_with_the_embedded_model():
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge", "validate", "examples/support_tickets/train.jsonl",
         "--model", "smollm2-135m-instruct", "--json", "--max-length", "512", "--estimate"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["errors"] == [] and report["n_examples"] == 400
    assert report["auto_epochs"] == 3
    stats = report["tokens_per_example"]
    assert 0 < stats["min"] <= stats["mean"] <= stats["p95"] <= stats["max"] <= 512
    # Only the JSON answers (and their end-of-turn tokens) are trained, so well under half the tokens.
    assert 0 < report["n_trained_tokens"] < report["n_tokens"] / 2
    estimate = report["estimate"]
    assert estimate["device"] in ("cpu", "cuda") and estimate["epochs"] == 3
    assert estimate["train_tokens"] == 3 * report["n_tokens"]
    assert estimate["seconds_per_token"] > 0 and estimate["train_seconds"] > 0
    assert estimate["peak_memory_mb"] > 200  # a 135M-parameter model in fp32 alone is ~540 MB
    assert "validate train.jsonl" in done.stderr  # progress goes to stderr, never to stdout
