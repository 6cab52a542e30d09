"""The loss mask, token by token, on hand-checked conversations."""

from __future__ import annotations

import pytest

from tuneforge.data.tokenize import (
    IGNORE_INDEX,
    tokenize_conversation,
    tokenize_conversation_examples,
    tokenize_prompt,
    trained_spans,
)
from tuneforge.errors import UserError


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def trained_tokens(tokenizer, example):
    return [t for t, label in zip(tokens(tokenizer, example.input_ids), example.labels, strict=True) if label != IGNORE_INDEX]


def test_single_turn_mask_hand_checked(tiny_tokenizer):
    """Rendered: <|im_start|> user \\n what is a <|im_end|> \\n <|im_start|> assistant \\n b <|im_end|> \\n

    Trained: the answer 'b' and the end-of-turn token that follows it; not the newline the template
    adds after <|im_end|>, not the prompt, not the 'assistant' header.
    """
    messages = [{"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b"}]
    example = tokenize_conversation(tiny_tokenizer, messages)
    assert tokens(tiny_tokenizer, example.input_ids) == [
        "<|im_start|>", "user", "\n", "what", "is", "a", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n", "b", "<|im_end|>", "\n",
    ]  # fmt: skip
    expected_mask = [False] * 11 + [True, True, False]
    assert [label != IGNORE_INDEX for label in example.labels] == expected_mask
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    assert all(example.labels[i] == example.input_ids[i] for i in trained)


def test_multi_turn_with_weight_zero(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "what is a"},
        {"role": "assistant", "content": "b", "weight": 0},
        {"role": "user", "content": "what is c"},
        {"role": "assistant", "content": "d", "weight": 1},
    ]
    example = tokenize_conversation(tiny_tokenizer, messages)
    assert trained_tokens(tiny_tokenizer, example) == ["d", "<|im_end|>"]


def test_every_trained_assistant_turn_is_masked_in(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "what is a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "what is c"},
        {"role": "assistant", "content": "d e"},
    ]
    example = tokenize_conversation(tiny_tokenizer, messages)
    assert trained_tokens(tiny_tokenizer, example) == ["b", "<|im_end|>", "d", "e", "<|im_end|>"]


def test_prompt_tokens_equal_training_prefix(tiny_tokenizer):
    """At inference the model sees exactly the tokens that precede the answer in training."""
    messages = [{"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b"}]
    example = tokenize_conversation(tiny_tokenizer, messages)
    prompt = tokenize_prompt(tiny_tokenizer, messages[:1])
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[len(prompt)] != IGNORE_INDEX


def test_truncation_counts_cut_tokens(tiny_tokenizer):
    messages = [{"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b c d e f"}]
    example = tokenize_conversation(tiny_tokenizer, messages, max_length=12)
    assert len(example.input_ids) == 12 and example.truncated_tokens == 6


def test_template_whose_prompt_changes_once_the_answer_follows_is_refused(tiny_tokenizer):
    """Brackets around the last message: the prompt "[a]" the model sees is not where the answer "a[b]" starts,
    so no sequence can train the answer after its own prompt (a template that only rewrites earlier turns is
    handled instead: tests/unit/test_chat_templates.py)."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"}]
    with pytest.raises(UserError, match="prefix-stable"):
        trained_spans(tokenizer, messages)
    with pytest.raises(UserError, match="prefix-stable"):
        tokenize_conversation_examples(tokenizer, messages[:2])
