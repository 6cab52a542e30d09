"""Every promised architecture, as a tiny random model from its own config class (`tests/tiny_models.py`):
LoRA SFT through the real recipe trains exactly the adapter on the right modules, and the fused losses of
the SFT, DPO and GRPO recipes equal the cross-entropy of the model's own `logits` on a padded batch.

    .venv/bin/python -m pytest tests/unit/test_architectures.py

Why the model's own logits: the fused losses never call the model's forward; they read the decoder's hidden
states and the output head (`trainable.output_head`). Whatever an architecture does after its head matmul
(Gemma 2's final softcap, Cohere's logit scale, a head bias) the loss must do too, and the model's forward is
the independent reference for it.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.conftest import make_tokenizer, write_jsonl
from tests.tiny_models import ARCHITECTURES, build_tiny_model
from tuneforge.config import build_config
from tuneforge.data.batching import collate
from tuneforge.data.formats import PreferencePair
from tuneforge.data.preference import tokenize_pair
from tuneforge.data.tokenize import IGNORE_INDEX, tokenize_conversation
from tuneforge.errors import UserError
from tuneforge.losses import OutputHead, linear_cross_entropy_sum, shifted_trained_positions
from tuneforge.recipes.dpo import pair_logprobs
from tuneforge.recipes.grpo import completion_logprobs
from tuneforge.recipes.sft import micro_batch_loss_sum, train
from tuneforge.trainable import autocast_for, build_model, final_hidden_states, output_head

ATTENTION_AND_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# Phi-3 fuses q/k/v into one projection and gate/up into another: those are the modules LoRA must reach.
LORA_MODULES = {architecture: ATTENTION_AND_MLP for architecture in ARCHITECTURES}
LORA_MODULES["phi3"] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
N_LAYERS = 2  # tiny_models' num_hidden_layers

# Both sides are fp32 computations of the same matmul on the same hidden states (the fused loss reads the very
# decoder output the model's forward feeds its head); they differ only in summation order (chunked logsumexp,
# per-row sums), ~1e-7 relative here. 1e-5 relative leaves room for that and nothing else: Gemma 2's
# uncapped logits (the loss before heads had parts) are off by 6e-4 relative on this batch, the others by more.
RELATIVE_TOLERANCE = 1e-5

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    return {architecture: build_tiny_model(architecture, root / architecture) for architecture in ARCHITECTURES}


def letter_rows(n=40):
    """A learnable toy task: a letter -> the next letter."""
    return [{"messages": [{"role": "user", "content": f"what is {LETTERS[i % 25]}"},
                          {"role": "assistant", "content": LETTERS[i % 25 + 1]}]} for i in range(n)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_sft_trains_exactly_the_adapter_on_every_projection(tmp_path, tiny_models, architecture):
    """The recipe with its default targets (PEFT's all-linear): every attention and MLP projection of every
    layer gets LoRA (Phi-3's fused qkv_proj and gate_up_proj included), the output head and the embeddings do
    not; the loss falls; the base weights are bit-identical afterwards and every LoRA B left its zero init."""
    folder = tiny_models[architecture]
    out = tmp_path / "out"
    config = build_config({"data": str(write_jsonl(tmp_path / "train.jsonl", letter_rows())), "model": str(folder),
                           "output": str(out), "max_steps": 30, "learning_rate": 3e-2, "batch_size": 8,
                           "warmup_ratio": 0.0, "validation_split": 0.0, "dtype": "float32"})
    train(config)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.65 * losses[0], losses  # 30 steps reach about half on every architecture

    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)
    assert all(".layers." in key for key in adapter)  # nothing outside the blocks: no head, no embeddings
    adapted = {"layers." + key.split(".layers.", 1)[1].split(".lora_")[0] for key in adapter}
    expected = {f"layers.{layer}.{'mlp' if name in {'gate_proj', 'up_proj', 'down_proj', 'gate_up_proj'} else 'self_attn'}"
                f".{name}" for layer in range(N_LAYERS) for name in LORA_MODULES[architecture]}
    assert adapted == expected
    assert all(value.abs().sum() > 0 for key, value in adapter.items() if "lora_B" in key)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder)
    original = {name: value.clone() for name, value in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, out)
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, original[name.replace(".base_layer", "")]), name


def recipe_model(folder, tmp_path):
    """The model exactly as the recipes build it (LoRA on, fp32), with a non-zero adapter so it takes part."""
    config = build_config({"data": str(tmp_path / "unused.jsonl"), "model": str(folder), "dtype": "float32"})
    model, tokenizer, device, _ = build_model(config, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval(), tokenizer


def padded_batch(tokenizer):
    """Three conversations of different lengths through the project's own tokenizer and collate: a one-turn
    one, a longer one, and a multi-turn one past the 16-token sliding window of Gemma and Mistral."""
    conversations = [
        [{"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b"}],
        [{"role": "user", "content": "hello what is the answer"}, {"role": "assistant", "content": "yes the answer is c d"}],
        [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "what is e"},
         {"role": "assistant", "content": "f g"}, {"role": "user", "content": "please what is h"},
         {"role": "assistant", "content": "i j k l"}],
    ]
    examples = [tokenize_conversation(tokenizer, messages) for messages in conversations]
    return examples, collate(examples, pad_id=tokenizer.pad_token_id)


def own_token_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every trained next token from the model's own forward, and the mask of where they are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    next_labels = batch["labels"][:, 1:]
    mask = next_labels != IGNORE_INDEX
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, next_labels.clamp(min=0)[..., None]).squeeze(-1)
    return logprobs, mask


def assert_loss_is_the_models_own(model, batch):
    """SFT: the recipe's summed loss and its gradients equal those of F.cross_entropy on the model's logits."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused, n_targets = micro_batch_loss_sum(model, batch)
    fused_grads = torch.autograd.grad(fused, trainable)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    next_labels = batch["labels"][:, 1:]
    mask = next_labels != IGNORE_INDEX
    reference = F.cross_entropy(logits[:, :-1][mask].float(), next_labels[mask], reduction="sum")
    reference_grads = torch.autograd.grad(reference, trainable)
    assert n_targets == int(mask.sum())
    assert float(fused.detach()) == pytest.approx(float(reference.detach()), rel=RELATIVE_TOLERANCE)
    # Gradients as one vector: an entry is a sum over tokens with cancellations, so entrywise relative error
    # means nothing for entries near 0; fp32 reordering leaves ~1e-6 of the vector's norm.
    fused_vector, reference_vector = torch.cat([g.flatten() for g in fused_grads]), torch.cat([g.flatten() for g in reference_grads])
    assert (fused_vector - reference_vector).norm() <= RELATIVE_TOLERANCE * reference_vector.norm()
    return float(reference)


def assert_logprobs_are_the_models_own(model, tokenizer, examples, batch):
    """DPO: the sequence log-prob sums of `pair_logprobs`; GRPO: the per-token log-probs of `completion_logprobs`."""
    with torch.no_grad():
        own, mask = own_token_logprobs(model, batch)
        flat = completion_logprobs(model, examples, tokenizer.pad_token_id, "cpu")
        assert torch.allclose(flat, own[mask], rtol=RELATIVE_TOLERANCE, atol=1e-6)

        pair = PreferencePair(prompt=[{"role": "user", "content": "what is a"}], chosen="b", rejected="c d e no")
        tokenized = tokenize_pair(tokenizer, pair, max_length=64)
        chosen, rejected, chosen_count, rejected_count = pair_logprobs(model, [tokenized], tokenizer.pad_token_id, "cpu")
        pair_batch = collate([tokenized.chosen, tokenized.rejected], pad_id=tokenizer.pad_token_id)
        own, mask = own_token_logprobs(model, pair_batch)
        own_sums = (own * mask).sum(dim=1)
        assert float(chosen[0]) == pytest.approx(float(own_sums[0]), rel=RELATIVE_TOLERANCE)
        assert float(rejected[0]) == pytest.approx(float(own_sums[1]), rel=RELATIVE_TOLERANCE)
        assert (int(chosen_count[0]), int(rejected_count[0])) == tuple(mask.sum(dim=1).tolist())


def plain_head_gap(model, batch) -> float:
    """How far the loss of the bare matmul head (what tuneforge computed before heads had parts) is from the
    model's own: shows the test above would fail for a head whose extras matter."""
    with torch.no_grad():
        trained_hidden, targets = shifted_trained_positions(final_hidden_states(model, batch), batch["labels"])
        head = output_head(model)
        right = float(linear_cross_entropy_sum(trained_hidden, head, targets))
        plain = float(linear_cross_entropy_sum(trained_hidden, OutputHead(head.weight), targets))
    return abs(plain - right) / abs(right)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_recipe_losses_equal_those_of_the_models_own_logits(tmp_path, tiny_models, architecture):
    model, tokenizer = recipe_model(tiny_models[architecture], tmp_path)
    examples, batch = padded_batch(tokenizer)
    assert batch["attention_mask"].min() == 0  # padded
    assert_loss_is_the_models_own(model, batch)
    assert_logprobs_are_the_models_own(model, tokenizer, examples, batch)
    if architecture == "gemma2":
        assert output_head(model).softcap == 30.0
        assert plain_head_gap(model, batch) > 50 * RELATIVE_TOLERANCE


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bf16_recipe_loss_is_the_models_own_within_bf16_rounding(tmp_path, tiny_models, architecture):
    """With bf16 compute (bf16 base weights, autocast), as on a GPU: build_model's own head check passes, and the
    recipe's loss matches the model's. The model rounds its logits to bf16 (2^-8 relative, ~0.02 on these
    logits of up to ~5) before its softcap, where the fused loss finishes them in fp32: 1e-3 relative allows that."""
    config = build_config({"data": str(tmp_path / "unused.jsonl"), "model": str(tiny_models[architecture]),
                           "dtype": "bfloat16"})
    model, tokenizer, device, dtype = build_model(config, device="cpu")
    _, batch = padded_batch(tokenizer)
    with torch.no_grad(), autocast_for(device, dtype):
        fused, _ = micro_batch_loss_sum(model.eval(), batch)
        own, mask = own_token_logprobs(model, batch)
    assert dtype == torch.bfloat16
    assert float(fused) == pytest.approx(-float(own[mask].sum()), rel=1e-3)


# Heads with parts the promised architectures lack, each in the architecture that has it, built from its own
# config class like tests/tiny_models.py does: Gemma 3 with its (optional) final softcap set, Cohere's logit
# scale (a multiplier), Granite's logits_scaling (a divisor), Phi-2's head bias. One for every entry of
# trainable.LOGIT_SCALES.
def head_variant_model(variant: str, folder):
    import transformers as tf

    from tests.tiny_models import _common, tiny_config

    tokenizer = make_tokenizer()
    common = _common(tokenizer)
    if variant == "gemma3-softcap":
        config, model_class = tiny_config("gemma3", tokenizer)
        config.final_logit_softcapping = 4.0
    elif variant == "cohere":
        config, model_class = tf.CohereConfig(**common, logit_scale=0.25), tf.CohereForCausalLM
    elif variant == "cohere2":
        config, model_class = tf.Cohere2Config(**common, logit_scale=0.25, sliding_window=16), tf.Cohere2ForCausalLM
    elif variant == "granite":
        config, model_class = tf.GraniteConfig(**common, logits_scaling=4.0), tf.GraniteForCausalLM
    elif variant == "granitemoe":
        config, model_class = (tf.GraniteMoeConfig(**common, logits_scaling=4.0, num_local_experts=2, num_experts_per_tok=1),
                               tf.GraniteMoeForCausalLM)
    elif variant == "phi-bias":
        config, model_class = tf.PhiConfig(**common), tf.PhiForCausalLM
    torch.manual_seed(0)
    model = model_class(config)
    if variant == "phi-bias":
        with torch.no_grad():  # PyTorch's init leaves a bias near 0; a visible one shows it is read
            model.lm_head.bias.normal_(std=1.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("variant, expected", [
    ("gemma3-softcap", {"softcap": 4.0, "scale": 1.0, "bias": False}),
    ("cohere", {"softcap": None, "scale": 0.25, "bias": False}),
    ("cohere2", {"softcap": None, "scale": 0.25, "bias": False}),
    ("granite", {"softcap": None, "scale": 0.25, "bias": False}),
    ("granitemoe", {"softcap": None, "scale": 0.25, "bias": False}),
    ("phi-bias", {"softcap": None, "scale": 1.0, "bias": True}),
])
def test_head_variants_equal_the_models_own_logits(tmp_path, variant, expected):
    model, tokenizer = recipe_model(head_variant_model(variant, tmp_path / variant), tmp_path)
    head = output_head(model)
    assert {"softcap": head.softcap, "scale": head.scale, "bias": head.bias is not None} == expected
    examples, batch = padded_batch(tokenizer)
    assert_loss_is_the_models_own(model, batch)
    assert_logprobs_are_the_models_own(model, tokenizer, examples, batch)
    assert plain_head_gap(model, batch) > 50 * RELATIVE_TOLERANCE


def test_a_head_tuneforge_does_not_know_is_refused(tmp_path, monkeypatch):
    """Cohere with its logit scale unknown to `output_head`: build_model compares the fused head with the
    model's own logits and refuses, rather than training on a different loss."""
    import tuneforge.trainable as trainable

    folder = head_variant_model("cohere", tmp_path / "cohere")
    monkeypatch.setattr(trainable, "LOGIT_SCALES", {})
    with pytest.raises(UserError, match="does not reproduce") as caught:
        recipe_model(folder, tmp_path)
    assert caught.value.code == "unsupported_output_head"


def test_lora_on_the_output_head_is_refused(tmp_path, tiny_models):
    """The fused loss reads the head's weight and would ignore an adapter on it."""
    config = build_config({"data": str(tmp_path / "unused.jsonl"), "model": str(tiny_models["phi3"]), "dtype": "float32",
                           "lora_target_modules": "qkv_proj,lm_head"})
    with pytest.raises(UserError, match="output head") as caught:
        build_model(config, device="cpu")
    assert caught.value.code == "lora_on_output_head"
