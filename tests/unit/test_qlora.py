"""QLoRA on the tiny random Llama: a 4-bit NF4 base (bitsandbytes, on the CPU) with LoRA on top trains through
the real SFT recipe, only the adapter changes, resume is bit-exact, and merge/export fold the adapter into the
same dequantised weights it trained on."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.errors import UserError
from tuneforge.recipes.sft import train

pytest.importorskip("bitsandbytes")

QLORA = dict(quantize="4bit", dtype="float32", forgetting_guard="off", batch_size=4, learning_rate=3e-2)


def run(tmp_path, model_dir, rows, name="out", **overrides):
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    config = build_config({"data": str(data), "model": str(model_dir), "output": str(tmp_path / name),
                           **QLORA, **overrides})
    return config, train(config)


def test_4bit_base_is_quantised_and_only_lora_trains(tiny_model_dir):
    import bitsandbytes as bnb

    from tuneforge.trainable import build_model, core

    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **QLORA})
    model, _, _, _ = build_model(config, "cpu")
    linears = [m for m in core(model).modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down of each of the 2 blocks; never the output head
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in linears)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(not m.weight.requires_grad and m.weight.dtype == torch.uint8 for m in linears)


def test_qlora_trains_loss_falls_and_writes_a_plain_adapter(tmp_path, tiny_model_dir, qa_rows):
    _, summary = run(tmp_path, tiny_model_dir, qa_rows, epochs=8)
    out = tmp_path / "out"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert json.loads((out / "train_config.json").read_text())["quantize"] == "4bit"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)  # the 4-bit base is never saved
    assert any(value.abs().sum() > 0 for key, value in adapter.items() if "lora_B" in key)
    assert summary["status"] == "completed"


def test_merge_folds_the_adapter_into_the_dequantised_base_it_trained_on(tmp_path, tiny_model_dir, qa_rows):
    """The trained model is (4-bit base, adapter); the merged one must answer like it. Merging into the
    unquantised base instead would add the NF4 rounding error back: that gap is larger than the tolerance,
    so the test tells the two apart."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.export.merge import merged_model
    from tuneforge.models import ResolvedModel, load_quantized_base

    run(tmp_path, tiny_model_dir, qa_rows, epochs=4)
    adapter = tmp_path / "out"
    ids = torch.arange(4, 40)[None]
    with torch.no_grad():
        resolved = ResolvedModel(str(tiny_model_dir), tiny_model_dir, "dir")
        quantised = PeftModel.from_pretrained(load_quantized_base(resolved, "4bit", torch.float32, "cpu"), adapter)
        trained = quantised.eval()(input_ids=ids).logits
        merged, _ = merged_model(str(adapter), str(tiny_model_dir))
        assert not any("bitsandbytes" in type(m).__module__ for m in merged.modules())
        folded = merged(input_ids=ids).logits
        naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
        naive_logits = naive.merge_and_unload().eval()(input_ids=ids).logits
    assert torch.allclose(folded, trained, atol=1e-4, rtol=1e-4), (folded - trained).abs().max()
    assert (naive_logits - trained).abs().max() > 100 * (folded - trained).abs().max()


def test_export_hf_writes_a_plain_model(tmp_path, tiny_model_dir, qa_rows):
    from transformers import AutoModelForCausalLM

    from tuneforge.export.merge import merged_model, save_hf

    run(tmp_path, tiny_model_dir, qa_rows, max_steps=2)
    merged, tokenizer = merged_model(str(tmp_path / "out"), str(tiny_model_dir))
    save_hf(merged, tokenizer, tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert getattr(reloaded.config, "quantization_config", None) is None
    ids = torch.arange(4, 20)[None]
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_qlora_resume_matches_the_uninterrupted_run(tmp_path, tiny_model_dir, qa_rows):
    """Checkpoint at step 2 of 4, resume from it: the adapter equals a straight 4-step run's, bit for bit."""
    from tuneforge.checkpoint import complete_checkpoints

    common = dict(max_steps=4, lora_dropout=0.1)
    run(tmp_path, tiny_model_dir, qa_rows, name="straight", **common)
    config, _ = run(tmp_path, tiny_model_dir, qa_rows, name="resumed", save_every=2, keep_checkpoints=5, **common)
    step2 = next(p for p in complete_checkpoints(tmp_path / "resumed") if p.name == "step-2")
    train(build_config({**config.to_dict(), "resume": str(step2)}))
    straight = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.parametrize(("overrides", "message"), [
    ({"quantize": "4bit", "full": True}, "quantize: applies to LoRA, but full=true"),
    ({"quantize": "2bit"}, "quantize: expected one of none, 4bit, 8bit"),
    ({"lora_init": "loftq"}, "lora_init=loftq: LoftQ initialises the adapter to cancel a 4-bit base"),
    ({"lora_init": "pissa", "quantize": "4bit", "forgetting_guard": "off"}, "must be computed in full precision"),
])
def test_quantize_config_problems(overrides, message):
    with pytest.raises(UserError, match=message):
        build_config({"data": "x.jsonl", **overrides})


def test_8bit_on_the_cpu_is_refused_with_the_reason(tiny_model_dir):
    from tuneforge.trainable import build_model

    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), "quantize": "8bit"})
    with pytest.raises(UserError, match="quantize=8bit needs a CUDA GPU"):
        build_model(config, "cpu")
