"""Tiny random models of every architecture tuneforge promises, each built from the architecture's own
config class (no downloads), with the tests' word-level tokenizer. Used by the architecture, export and
llama.cpp tests:

    folder = build_tiny_model("gemma2", tmp_path)      # a normal HF model directory
    ARCHITECTURES                                      # the names, in the order the README lists them

Each carries what makes its architecture differ from plain Llama: Llama 3.1's rope scaling, Qwen2's
q/k/v biases, Qwen3's q/k norms, Gemma 2's final logit softcapping and sliding window, Gemma 3's q/k norms
and local/global layers, Mistral's sliding window, Phi-3's fused qkv and gate/up projections.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3")


def _common(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        # As the tiny Llama of conftest: logits big enough for a LoRA-only toy task to be learnable.
        initializer_range=0.2,
    )


def tiny_config(architecture: str, tokenizer):
    """(config, model class) for one architecture."""
    import transformers as tf

    common = _common(tokenizer)
    if architecture == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True), tf.LlamaForCausalLM
    if architecture == "llama3":  # Llama 3.1+: rope scaling of type llama3, untied head
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}
        return tf.LlamaConfig(**common, tie_word_embeddings=False, rope_scaling=rope, rope_theta=500000.0), \
            tf.LlamaForCausalLM
    if architecture == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True), tf.Qwen2ForCausalLM
    if architecture == "qwen3":
        return tf.Qwen3Config(**common, head_dim=8, tie_word_embeddings=True), tf.Qwen3ForCausalLM
    if architecture == "gemma2":
        return tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                               query_pre_attn_scalar=8, sliding_window=16), tf.Gemma2ForCausalLM
    if architecture == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                                   final_logit_softcapping=None), tf.Gemma3ForCausalLM
    if architecture == "mistral":
        return tf.MistralConfig(**common, sliding_window=16, tie_word_embeddings=False), tf.MistralForCausalLM
    if architecture == "phi3":
        return tf.Phi3Config(**common, tie_word_embeddings=False), tf.Phi3ForCausalLM
    raise ValueError(f"unknown tiny architecture {architecture!r}; one of {', '.join(ARCHITECTURES)}")


def build_tiny_model(architecture: str, folder: Path, seed: int = 0) -> Path:
    """A 2-layer random model of `architecture` saved with the tests' tokenizer into `folder`."""
    import torch

    from tests.conftest import make_tokenizer

    tokenizer = make_tokenizer()
    config, model_class = tiny_config(architecture, tokenizer)
    torch.manual_seed(seed)
    model = model_class(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
