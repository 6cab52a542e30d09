"""Which attention kernel an SFT run uses (trainable.choose_attention): auto picks eager on the CPU for rows up to
EAGER_ATTENTION_MAX_TOKENS, where it measured faster than SDPA, and the model's default otherwise; a named one is
used as named. Whatever is chosen, training ends on the same weights (fp32, tiny random Llama)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.errors import UserError
from tuneforge.recipes.sft import train
from tuneforge.trainable import EAGER_ATTENTION_MAX_TOKENS, build_model, choose_attention, core


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir):
    config = build_config({"data": "unused.jsonl", "model": str(tiny_model_dir), "dtype": "float32"})
    model, _, _, _ = build_model(config, "cpu")
    return model


def implementation(model) -> str:
    return core(model).config._attn_implementation


@pytest.mark.parametrize(
    ("attention", "device", "longest_row", "expected"),
    [
        ("auto", "cpu", 300, "eager"),
        ("auto", "cpu", EAGER_ATTENTION_MAX_TOKENS, "eager"),
        ("auto", "cpu", EAGER_ATTENTION_MAX_TOKENS + 1, "sdpa"),  # eager would keep a T x T tensor per layer
        ("auto", "cuda", 300, "sdpa"),  # measured on the CPU only: a GPU keeps the model's default
        ("sdpa", "cpu", 300, "sdpa"),
        ("eager", "cpu", 4096, "eager"),
    ],
)
def test_auto_picks_eager_for_short_rows_on_the_cpu_and_a_named_kernel_is_kept(
    tiny_model_dir, tiny_lora, attention, device, longest_row, expected
):
    core(tiny_lora).set_attn_implementation("sdpa")  # as from_pretrained loads it
    config = build_config({"data": "unused.jsonl", "model": str(tiny_model_dir), "attention": attention})
    chosen, why = choose_attention(config, tiny_lora, device, longest_row)
    assert chosen == expected and implementation(tiny_lora) == expected
    assert why.startswith("attention=" if attention != "auto" else "auto: ")


def test_an_unknown_kernel_is_refused_when_the_config_is_read(tiny_model_dir):
    with pytest.raises(UserError, match="attention: expected one of auto, eager, sdpa"):
        build_config({"data": "unused.jsonl", "model": str(tiny_model_dir), "attention": "fastest"})


def test_eager_and_sdpa_runs_train_the_same_weights_and_say_which(tmp_path, tiny_model_dir, qa_rows):
    data = write_jsonl(tmp_path / "train.jsonl", qa_rows[:16])
    common = {"data": str(data), "model": str(tiny_model_dir), "max_steps": 3, "batch_size": 8, "dtype": "float32",
              "learning_rate": 1e-2, "forgetting_guard": "off"}
    summaries = {}
    for attention in ("auto", "sdpa"):
        summaries[attention] = train(build_config({**common, "output": str(tmp_path / attention), "attention": attention}))
    assert summaries["auto"]["attention"]["implementation"] == "eager"  # the tiny rows are short, on the CPU
    assert summaries["sdpa"]["attention"] == {"implementation": "sdpa", "why": "attention=sdpa"}
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["attention"]["implementation"] == "eager"
    eager, sdpa = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("auto", "sdpa"))
    assert eager.keys() == sdpa.keys()
    for key in eager:
        torch.testing.assert_close(eager[key], sdpa[key], rtol=1e-4, atol=1e-6, msg=key)
