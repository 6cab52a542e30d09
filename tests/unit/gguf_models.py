"""What the GGUF tests share: tokenizers GGUF can describe, tiny models that use them, and llama.cpp.

    folder = tiny_bpe_model("gemma2", tmp_path / "m")    # tests/tiny_models.py's model, byte-level BPE vocab
    llama_cpp = llama_cpp_or_skip()                      # skips with scripts/install_llama_cpp.sh's reason
    logits = llama_cpp_logits(path, ids, f32_cache=True)

The shared tiny models carry a word-level tokenizer, which llama.cpp has no vocabulary type for, so
`tiny_bpe_model` gives the same architecture a small byte-level BPE vocabulary (what SmolLM2, Llama 3 and
Qwen use) trained here with the `tokenizers` library, with freshly seeded embedding rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Where is my order? It shipped on Monday and should arrive soon.",
    "I want a refund for order 12345, the item arrived broken.",
    "category: shipping, priority: high. Hello, please help me!",
    '{"name": "Ana", "order": 987, "category": "refund"}',
] * 20
PROMPTS = ["Where is my refund?", "order 42 arrived broken", '{"category": "shipping"}', "hello please help", "Monday"]
WHEEL_CACHE = Path(os.environ.get("TUNEFORGE_WHEEL_CACHE", Path.home() / ".cache" / "tuneforge-tests" / "wheels"))


def make_bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def make_sentencepiece_style_tokenizer():
    """A byte-fallback BPE with a "▁" word prefix (how Llama 2 and Mistral tokenizers look in tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_bpe_model(architecture: str, folder: Path, tokenizer=None) -> Path:
    """tests/tiny_models.py's `architecture` saved in `folder`, with `tokenizer` (default: the byte-level
    BPE) as its vocabulary.

    Keep "phi3" and "mistral" out of the folder name: it becomes the GGUF's general.name, and llama.cpp
    (Phi-3 special-token rules needing Phi-3's own tokens) and transformers (reading "mistral" files as
    an architecture gguf-py lacks) both change behaviour on those names.

    The embedding (and an untied head) are redrawn with a fixed seed for the new vocabulary size:
    `resize_token_embeddings`' own new rows are the old mean plus noise of ~1e-5, so every new token
    would look alike and argmax comparisons would be decided by that noise. Norm weights are moved off
    their init (all ones, or all zeros for Gemma's 1 + w), which would hide a writer that drops, swaps
    or mis-shifts them.
    """
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import build_tiny_model

    tokenizer = tokenizer or make_bpe_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(architecture, folder / "word-level"), dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(0)
    std = model.config.initializer_range
    with torch.no_grad():
        layers = [model.get_input_embeddings()]
        if not model.config.tie_word_embeddings:
            layers.append(model.get_output_embeddings())
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.add_(torch.randn(weight.shape, generator=generator) * 0.2)
    for name in ("bos", "eos", "pad"):
        setattr(model.config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
        setattr(model.generation_config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def llama_cpp_or_skip():
    """The llama_cpp module, or a skip naming why it is missing (the install script leaves its reason)."""
    try:
        import llama_cpp
    except ImportError:
        reasons = sorted(WHEEL_CACHE.glob("llama_cpp_python-*.unavailable"))
        reason = reasons[-1].read_text().strip() if reasons else (
            "llama-cpp-python is not installed: run scripts/install_llama_cpp.sh .venv/bin/python (make test does)"
        )
        pytest.skip(reason)
    return llama_cpp


def load_in_llama_cpp(path: Path, *, f32_cache: bool = False, n_ctx: int = 256):
    """llama.cpp's model of a GGUF file, keeping every position's logits; f32_cache avoids its f16 KV cache."""
    llama_cpp = llama_cpp_or_skip()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False, **cache)


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
