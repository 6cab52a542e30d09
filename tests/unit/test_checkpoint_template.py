"""A checkpoint's adapter carries the tokenizer and the chat template its run trained with, so `ft:...:ckpt-step-N`
is served (and loaded by eval, generate, export) in the run's template, not the base's; one written before
checkpoints carried it falls back to the run folder's.

    .venv/bin/python -m pytest tests/unit/test_checkpoint_template.py

The run is the real SFT recipe on the tiny random Llama, trained on tool-call rows with chat_template=chatml-tools:
the tiny tokenizer's own template (ChatML) ignores tools, so a checkpoint served with it would never show the
model the request's tools.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import write_jsonl
from tuneforge.chat_templates import BUILTIN_TEMPLATES
from tuneforge.config import build_config
from tuneforge.data.tokenize import tokenize_prompt
from tuneforge.models import adapter_tokenizer_dir, load_model, load_tokenizer
from tuneforge.recipes.sft import train
from tuneforge.runfiles import complete_checkpoints
from tuneforge.serving import Engine, GenerationRequest

CHATML_TOOLS = BUILTIN_TEMPLATES["chatml-tools"].source
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look a letter up",
                                           "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]
QUESTION = [{"role": "user", "content": "what is a"}]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def tool_rows() -> list[dict]:
    letters = "abcdefghijklmnop"
    rows = []
    for i, letter in enumerate(letters):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"name": letter})}}
        rows.append({"messages": [{"role": "user", "content": f"what is {letter}"},
                                  {"role": "assistant", "content": None, "tool_calls": [call]}], "tools": TOOLS})
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A finished LoRA run that checkpointed at step 2 (of 4)."""
    root = tmp_path_factory.mktemp("checkpoint-template")
    data = write_jsonl(root / "tools.jsonl", tool_rows())
    config = build_config({"data": str(data), "model": str(tiny_model_dir), "output": str(root / "run"),
                           "chat_template": "chatml-tools", "max_steps": 4, "batch_size": 4, "save_every": 2,
                           "validation_split": 0, "dtype": "float32"})
    train(config)
    return root / "run"


def served_prompt_tokens(adapter) -> int:
    """How many prompt tokens the serving engine renders for QUESTION with TOOLS on `adapter`."""
    messages = []
    engine = Engine(load=lambda model, folder: load_model(model, folder, dtype=torch.float32, device="cpu"),
                    background=False)
    engine.submit(GenerationRequest.from_json({"id": "q", "messages": QUESTION, "tools": TOOLS, "adapter": str(adapter),
                                               "max_new_tokens": 1}), messages.append)
    engine.run_until_idle()
    (final,) = [m for m in messages if "result" in m or "error" in m]
    assert "result" in final, final
    return final["result"]["prompt_tokens"]


def test_each_checkpoint_adapter_carries_the_runs_chat_template(run_dir, tiny_model_dir):
    (checkpoint,) = complete_checkpoints(run_dir)
    adapter = checkpoint / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert load_tokenizer(tiny_model_dir).chat_template != CHATML_TOOLS  # the base's own: ChatML, no tools
    assert adapter_tokenizer_dir(adapter) == adapter
    assert load_tokenizer(adapter).chat_template == CHATML_TOOLS
    _, tokenizer = load_model(adapter=str(adapter), dtype=torch.float32, device="cpu")  # eval, generate, compare
    assert tokenizer.chat_template == CHATML_TOOLS
    # Served, the request's tools are in the prompt, as they were in training.
    with_tools = tokenize_prompt(tokenizer, QUESTION, TOOLS)
    assert len(with_tools) > len(tokenize_prompt(load_tokenizer(tiny_model_dir), QUESTION, TOOLS))
    assert served_prompt_tokens(adapter) == len(with_tools)


def test_a_checkpoint_written_without_a_tokenizer_falls_back_to_the_run_folders_then_the_bases(
        run_dir, tiny_model_dir, tmp_path):
    import shutil

    old_run = tmp_path / "run"
    shutil.copytree(run_dir, old_run)
    (checkpoint,) = complete_checkpoints(old_run)
    adapter = checkpoint / "adapter"
    for file in adapter.iterdir():  # the layout before checkpoints carried the tokenizer
        if file.name not in ADAPTER_FILES:
            file.unlink()
    assert not (adapter / "tokenizer_config.json").exists()
    assert adapter_tokenizer_dir(adapter) == old_run
    _, tokenizer = load_model(adapter=str(adapter), dtype=torch.float32, device="cpu")
    assert tokenizer.chat_template == CHATML_TOOLS
    assert served_prompt_tokens(adapter) == len(tokenize_prompt(tokenizer, QUESTION, TOOLS))

    # A run folder without one either (a run still training, before its final save): the base's.
    for file in old_run.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            file.unlink()
    assert adapter_tokenizer_dir(adapter) is None
    base_tokenizer = load_tokenizer(tiny_model_dir)
    assert served_prompt_tokens(adapter) == len(tokenize_prompt(base_tokenizer, QUESTION, TOOLS))
    # Only a checkpoint's adapter/ looks up to a run folder: an adapter elsewhere stands alone.
    loose = tmp_path / "loose" / "adapter"
    shutil.copytree(adapter, loose)
    assert adapter_tokenizer_dir(loose) is None
