"""Shared fixtures: a tiny random Llama (built here, no downloads) and a word-level ChatML tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "system user assistant you are helpful what is the answer yes no maybe a b c d e f g h i j k l m n o p q r s t u v w x y z "
    "0 1 2 3 4 5 6 7 8 9 { } : , \" name order category priority high low normal refund shipping hello hi please"
).split()


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + ["\n"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split on spaces (dropped) and keep newlines and punctuation as their own tokens.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(" +"), behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the word-level tokenizer, saved as a normal HF model directory (the
    "llama" of tests/tiny_models.py, whose embeddings are large enough for a LoRA-only toy task)."""
    from tests.tiny_models import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


def base_and_perturbed(model_dir: Path, scale: float, generator=None):
    """(base, the same model with every weight moved by scale x N(0, 1) noise, tokenizer), both fp32: the
    forgetting tests check arithmetic, and load_model's bf16 (where the CPU runs it fast) rounds logits."""
    import torch

    from tuneforge.models import load_model

    base, tokenizer = load_model(str(model_dir), dtype=torch.float32)
    other, _ = load_model(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn_like(parameter, generator=generator))
    return base, other, tokenizer


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def qa_rows():
    """A learnable toy task: a letter -> the next letter."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        {"messages": [{"role": "user", "content": f"what is {letters[i % 25]}"}, {"role": "assistant", "content": letters[i % 25 + 1]}]}
        for i in range(40)
    ]
