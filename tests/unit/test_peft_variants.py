"""The PEFT variants as config keys, on the tiny random Llama through the real SFT recipe: DoRA, rsLoRA, the
initialisations (gaussian, PiSSA, OLoRA, LoftQ), LoRA+ and NEFTune. Every adapter written must load with plain
`PeftModel.from_pretrained` on the original base and merge."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tuneforge.config import build_config
from tuneforge.errors import UserError
from tuneforge.recipes.sft import train

FAST = dict(dtype="float32", forgetting_guard="off", batch_size=4, learning_rate=1e-2)


def config_for(tmp_path, model_dir, rows, name="out", **overrides):
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    return build_config({"data": str(data), "model": str(model_dir), "output": str(tmp_path / name),
                         **FAST, **overrides})


def plain_peft(model_dir, adapter):
    """The adapter on the original base, loaded the way any PEFT user would."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()


def test_dora_adds_magnitude_vectors_and_saves_use_dora(tmp_path, tiny_model_dir, qa_rows):
    from tuneforge.export.merge import merged_model

    train(config_for(tmp_path, tiny_model_dir, qa_rows, max_steps=3, use_dora=True))
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    saved = load_file(str(out / "adapter_model.safetensors"))
    magnitudes = [key for key in saved if "lora_magnitude_vector" in key]
    assert len(magnitudes) == 2 * 7 and all(saved[key].ndim == 1 for key in magnitudes)
    model = plain_peft(tiny_model_dir, out)
    ids = torch.arange(4, 30)[None]
    with torch.no_grad():
        merged, _ = merged_model(str(out), str(tiny_model_dir))
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_model_dir):
    from tuneforge.trainable import build_model

    for rslora, expected in ((True, 32.0 / math.sqrt(16)), (False, 32.0 / 16)):
        config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "use_rslora": rslora,
                               "lora_r": 16, "lora_alpha": 32.0})
        model, _, _, _ = build_model(config, "cpu")
        scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
        assert len(scalings) == 1 and scalings.pop() == pytest.approx(expected)


def test_gaussian_init_starts_b_at_zero_and_a_gaussian(tiny_model_dir):
    from tuneforge.trainable import build_model

    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "lora_init": "gaussian"})
    model, _, _, _ = build_model(config, "cpu")
    a = torch.cat([p.flatten() for n, p in model.named_parameters() if ".lora_A." in n])
    b = torch.cat([p.flatten() for n, p in model.named_parameters() if ".lora_B." in n])
    assert torch.all(b == 0) and float(a.std()) == pytest.approx(1 / 16, rel=0.2)  # PEFT: N(0, 1/r)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_inits_leave_the_model_unchanged_and_save_plain_lora_for_the_original_base(
    tmp_path, tiny_model_dir, qa_rows, init
):
    """PiSSA / OLoRA put the principal part of each weight into the adapter and leave W - s B0 A0 in the
    base, so at step 0 the model is unchanged while the adapter-off model is not. What tuneforge saves is
    PEFT's conversion to plain LoRA of rank 2r for the original base: loaded with plain PEFT on the untouched
    base, it reproduces the trained model."""
    from transformers import AutoModelForCausalLM

    from tuneforge.checkpoint import restore_trainable
    from tuneforge.trainable import build_model, core

    config = config_for(tmp_path, tiny_model_dir, qa_rows, max_steps=3, save_every=2, lora_init=init, lora_r=4,
                        lora_alpha=8)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model, _, _, _ = build_model(config, "cpu")
    model.eval()
    ids = torch.arange(4, 30)[None]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
        with model.disable_adapter():
            assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-2)
    assert not torch.equal(core(model).model.layers[0].self_attn.q_proj.base_layer.weight,
                           base.model.layers[0].self_attn.q_proj.weight)

    train(config)
    step2 = tmp_path / "out" / "checkpoints" / "step-2"
    for folder in (tmp_path / "out", step2 / "adapter"):
        saved = json.loads((folder / "adapter_config.json").read_text())
        assert saved["r"] == 8 and saved["init_lora_weights"] is True  # rank 2r, a plain init for any loader
    # The trained model at step 2 (residual base + the trained pair, rebuilt as resume does) equals its
    # converted adapter loaded by plain PEFT on the original base, unmerged and merged.
    restore_trainable(model, load_file(str(step2 / "trainable.safetensors")))
    converted = plain_peft(tiny_model_dir, step2 / "adapter")
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        assert not torch.allclose(trained, base(input_ids=ids).logits, atol=1e-3)
        assert torch.allclose(converted(input_ids=ids).logits, trained, atol=1e-4)
        assert torch.allclose(converted.merge_and_unload()(input_ids=ids).logits, trained, atol=1e-4)


@pytest.mark.parametrize("overrides", [
    {"lora_init": "pissa"},  # the default forgetting guard reads the adapter-off model as the base
    {"lora_init": "olora", "forgetting_guard": "off", "method": "dpo"},
    {"lora_init": "pissa", "forgetting_guard": "off", "max_forgetting": 5.0},
])
def test_residual_inits_are_refused_where_the_adapter_off_model_is_read_as_the_base(overrides):
    with pytest.raises(UserError, match="the adapter-off model is no longer the base"):
        build_config({"data": "x.jsonl", **overrides})


def test_loftq_is_refused_on_the_cpu_with_the_reason(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from tuneforge.trainable import build_model

    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "quantize": "4bit",
                           "lora_init": "loftq"})
    with pytest.raises(UserError, match="PEFT computes LoftQ's decomposition on 'cuda'"):
        build_model(config, "cpu")


@pytest.mark.gpu
def test_loftq_on_a_4bit_base_starts_closer_to_the_original_weights(tiny_model_dir):
    """LoftQ fits the starting adapter to W - dequant(Q(W)): the 4-bit base plus that adapter is nearer the
    unquantised model than the 4-bit base alone."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from tuneforge.trainable import build_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().cuda()
    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "quantize": "4bit",
                           "lora_init": "loftq"})
    model, _, _, _ = build_model(config, "cuda")
    model.eval()
    ids = torch.arange(4, 30, device="cuda")[None]
    with torch.no_grad():
        target = base(input_ids=ids).logits
        with model.disable_adapter():
            quantised_gap = (model(input_ids=ids).logits - target).abs().mean()
        loftq_gap = (model(input_ids=ids).logits - target).abs().mean()
    assert loftq_gap < 0.8 * quantised_gap, (loftq_gap, quantised_gap)


def test_loraplus_gives_b_ratio_times_the_learning_rate_of_a(tmp_path, tiny_model_dir, qa_rows):
    from tuneforge.trainable import build_model, make_optimizer

    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "loraplus_lr_ratio": 16.0})
    model, _, _, _ = build_model(config, "cpu")
    optimizer = make_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        kinds = {".lora_B." in names[id(p)] for p in group["params"]}
        assert len(kinds) == 1
        assert group["lr"] == pytest.approx(1e-2 * (16.0 if kinds == {True} else 1.0))
    # Through the run shell's scheduled step too (run.optimizer_step): the groups a checkpoint saved after
    # step 2 hold the schedule's rate for A and ratio x it for B.
    train(config_for(tmp_path, tiny_model_dir, qa_rows, max_steps=3, save_every=2, loraplus_lr_ratio=16.0,
                     lr_schedule="constant", warmup_ratio=0.0))
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-2" / "state.json").read_text())
    rates = sorted(group["lr"] for group in state["optimizer"]["param_groups"])
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(16 * 1e-2)


def test_neftune_noise_only_in_training_passes_and_within_its_bound(tiny_model_dir):
    """Uniform noise in [-alpha/sqrt(L d), alpha/sqrt(L d)] on the embeddings of a training pass (train mode,
    gradients on); none in eval mode, none under no_grad (the forgetting guard's teacher pass)."""
    from tuneforge.trainable import build_model, core

    alpha = 5.0
    config = build_config({"data": "x.jsonl", "model": str(tiny_model_dir), **FAST, "neftune_noise_alpha": alpha})
    model, _, _, _ = build_model(config, "cpu")
    embedding = core(model).get_input_embeddings()
    ids = torch.arange(4, 28)[None]
    clean = torch.nn.functional.embedding(ids, embedding.weight)
    model.train()
    noisy = embedding(ids)
    bound = alpha / math.sqrt(ids.shape[1] * embedding.weight.shape[1])
    assert 0 < (noisy - clean).abs().max() <= bound * (1 + 1e-6)
    assert (noisy - clean).abs().max() > 0.5 * bound  # uniform over the whole range, not a tiny perturbation
    with torch.no_grad():
        assert torch.equal(embedding(ids), clean)
    model.eval()
    assert torch.equal(embedding(ids), clean)


def test_neftune_trains_and_is_sft_only(tmp_path, tiny_model_dir, qa_rows):
    summary = train(config_for(tmp_path, tiny_model_dir, qa_rows, max_steps=3, neftune_noise_alpha=5.0))
    assert summary["status"] == "completed"
    plain_peft(tiny_model_dir, tmp_path / "out")
    with pytest.raises(UserError, match="neftune_noise_alpha: set to 5.0, but method dpo does not use it"):
        build_config({"data": "x.jsonl", "method": "dpo", "neftune_noise_alpha": 5.0})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"use_dora": True, "full": True}, "use_dora: applies to LoRA, but full=true"),
    ({"loraplus_lr_ratio": 16, "full": True}, "loraplus_lr_ratio: applies to LoRA"),
    ({"use_rslora": True, "init_adapter": "runs/sft"}, "use_rslora: shapes a new adapter"),
    ({"lora_init": "pissa", "use_dora": True, "forgetting_guard": "off"}, "not DoRA's magnitude"),
    ({"lora_init": "xavier"}, "lora_init: expected one of"),
    ({"loraplus_lr_ratio": 0}, "loraplus_lr_ratio: must be > 0"),
])
def test_variant_config_problems(overrides, message):
    with pytest.raises(UserError, match=message):
        build_config({"data": "x.jsonl", **overrides})
