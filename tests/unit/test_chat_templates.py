"""Multi-turn masking under chat templates that rewrite earlier turns once later ones follow.

    .venv/bin/python -m pytest tests/unit/test_chat_templates.py

The promise (tuneforge/data/tokenize.py): the tokens trained for an assistant turn are exactly what the model
would generate for that turn in context, i.e. they follow the very prompt `tokenize_prompt` gives for the
conversation before the turn, and they are the turn as the template renders it when the turn is the newest.
"""

from __future__ import annotations

import copy

import pytest

from tests.conftest import CHATML, make_tokenizer
from tuneforge.data.formats import Conversation
from tuneforge.data.tokenize import (
    IGNORE_INDEX,
    tokenize_conversation,
    tokenize_conversation_examples,
    tokenize_prompt,
    trained_sequences,
)
from tuneforge.errors import UserError

# Qwen3's chat template without tools: the reasoning (<think>...</think>, in `content`) of an assistant turn is
# kept only after the last user message; there, the final turn always gets a think block (an empty one when it
# has no reasoning), as the model writes one in thinking mode.
QWEN3_LIKE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# ChatML that drops the reasoning of assistant turns before the last user message and is otherwise plain: turns
# without reasoning are left alone, so they can share a sequence with later turns.
STRIP_EARLIER_REASONING = (
    "{%- set ns = namespace(last_query_index=-1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if message.role == 'assistant' and loop.index0 < ns.last_query_index and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tokenizer_with(template: str):
    tokenizer = copy.deepcopy(make_tokenizer())
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = template
    return tokenizer


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def trained_tokens(tokenizer, example):
    return [t for t, label in zip(tokens(tokenizer, example.input_ids), example.labels, strict=True) if label != IGNORE_INDEX]


def assert_trained_as_generated(tokenizer, example, messages, turn_index):
    """The example's tokens start with the inference prompt for the turn, and the trained run right after it."""
    prompt = tokenize_prompt(tokenizer, messages[:turn_index])
    assert example.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in example.labels[: len(prompt)])
    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert first_trained == len(prompt)


REASONING_CONVERSATION = [
    {"role": "user", "content": "what is a"},
    {"role": "assistant", "content": "<think>\nb\n</think>\n\nc"},
    {"role": "user", "content": "what is d"},
    {"role": "assistant", "content": "<think>\ne\n</think>\n\nf"},
    {"role": "user", "content": "what is g"},
    {"role": "assistant", "content": "<think>\nh\n</think>\n\ni"},
]


def test_qwen3_like_reasoning_in_every_turn_trains_each_turn_in_its_own_context():
    """The full render drops turns 1 and 2's reasoning; the model wrote them with it. So three sequences, the
    k-th ending at turn k, each training only turn k, rendered as the newest turn:
    turn 1: prompt <|im_start|> user \\n what is a <|im_end|> \\n <|im_start|> assistant \\n
            trained <think> \\n b \\n </think> \\n \\n c <|im_end|>
    turn 2: its prompt holds turn 1 without reasoning (<|im_start|> assistant \\n c <|im_end|>), as at inference."""
    tokenizer = tokenizer_with(QWEN3_LIKE)
    examples = tokenize_conversation_examples(tokenizer, REASONING_CONVERSATION)
    assert len(examples) == 3
    assert trained_tokens(tokenizer, examples[0]) == ["<think>", "\n", "b", "\n", "</think>", "\n", "\n", "c", "<|im_end|>"]
    assert trained_tokens(tokenizer, examples[1]) == ["<think>", "\n", "e", "\n", "</think>", "\n", "\n", "f", "<|im_end|>"]
    assert trained_tokens(tokenizer, examples[2]) == ["<think>", "\n", "h", "\n", "</think>", "\n", "\n", "i", "<|im_end|>"]
    for example, turn_index in zip(examples, (1, 3, 5), strict=True):
        assert_trained_as_generated(tokenizer, example, REASONING_CONVERSATION, turn_index)
    assert tokens(tokenizer, examples[1].input_ids)[8:16] == [
        "<|im_start|>", "assistant", "\n", "c", "<|im_end|>", "\n", "<|im_start|>", "user",
    ]  # fmt: skip


def test_qwen3_like_without_reasoning_still_splits_because_the_newest_turn_gets_a_think_block():
    """Qwen3 writes an empty think block for the newest turn (<think> \\n \\n </think> \\n \\n answer), which the
    full render leaves out of earlier turns: every turn is rewritten, so one sequence per turn again."""
    tokenizer = tokenizer_with(QWEN3_LIKE)
    messages = [{"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "what is c"}, {"role": "assistant", "content": "d"}]
    examples = tokenize_conversation_examples(tokenizer, messages)
    assert [trained_tokens(tokenizer, e) for e in examples] == [
        ["<think>", "\n", "\n", "</think>", "\n", "\n", "b", "<|im_end|>"],
        ["<think>", "\n", "\n", "</think>", "\n", "\n", "d", "<|im_end|>"],
    ]
    for example, turn_index in zip(examples, (1, 3), strict=True):
        assert_trained_as_generated(tokenizer, example, messages, turn_index)


def test_turns_the_template_leaves_alone_share_the_full_sequence():
    """STRIP_EARLIER_REASONING on user, a1 (no reasoning), user, a2 (reasoning), user, a3 (reasoning): the full
    render leaves a1 as it was and a3 is the newest turn, so the full sequence serves both; a2's reasoning is
    gone there, so a2 gets the render through it, which trains a2 only (a1 is trained once, not again)."""
    tokenizer = tokenizer_with(STRIP_EARLIER_REASONING)
    messages = [
        {"role": "user", "content": "what is a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "what is c"}, {"role": "assistant", "content": "<think>\nd\n</think>\n\ne"},
        {"role": "user", "content": "what is f"}, {"role": "assistant", "content": "<think>\ng\n</think>\n\nh"},
    ]
    examples = tokenize_conversation_examples(tokenizer, messages)
    assert len(examples) == 2
    through_turn_2, full = examples
    assert trained_tokens(tokenizer, through_turn_2) == ["<think>", "\n", "d", "\n", "</think>", "\n", "\n", "e", "<|im_end|>"]
    assert trained_tokens(tokenizer, full) == ["b", "<|im_end|>",
                                               "<think>", "\n", "g", "\n", "</think>", "\n", "\n", "h", "<|im_end|>"]
    assert_trained_as_generated(tokenizer, through_turn_2, messages, 3)
    assert "<think>" not in tokens(tokenizer, full.input_ids)[:-12]  # turn 2 sits in the full render stripped


def test_chatml_multi_turn_is_one_sequence_identical_to_tokenize_conversation():
    tokenizer = tokenizer_with(CHATML)
    messages = [{"role": "system", "content": "you are helpful"}, *REASONING_CONVERSATION]
    (example,) = tokenize_conversation_examples(tokenizer, messages, max_length=40)
    single = tokenize_conversation(tokenizer, messages, max_length=40)
    assert (example.input_ids, example.labels, example.truncated_tokens) == (single.input_ids, single.labels,
                                                                             single.truncated_tokens)
    assert trained_tokens(tokenizer, tokenize_conversation(tokenizer, messages)).count("<|im_end|>") == 3


def test_weight_zero_turns_are_not_split_out():
    """Only trained turns need their own sequence: with the earlier turns at weight 0 (as DPO prompts are), a
    rewriting template gives one sequence, and the one-sequence `tokenize_conversation` accepts it."""
    tokenizer = tokenizer_with(QWEN3_LIKE)
    messages = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in REASONING_CONVERSATION[:-1]]
    messages.append(REASONING_CONVERSATION[-1])
    (example,) = tokenize_conversation_examples(tokenizer, messages)
    assert trained_tokens(tokenizer, example) == trained_tokens(tokenizer, tokenize_conversation(tokenizer, messages))
    assert_trained_as_generated(tokenizer, example, messages, 5)


def test_one_sequence_callers_are_told_the_conversation_needs_more():
    tokenizer = tokenizer_with(QWEN3_LIKE)
    with pytest.raises(UserError, match="trains as 3 sequences") as caught:
        tokenize_conversation(tokenizer, REASONING_CONVERSATION)
    assert caught.value.code == "template_not_prefix_stable"


def test_each_sequence_is_cut_to_max_length_on_its_own():
    tokenizer = tokenizer_with(QWEN3_LIKE)
    uncut = tokenize_conversation_examples(tokenizer, REASONING_CONVERSATION)
    assert [len(e.input_ids) for e in uncut] == [21, 35, 49]  # turns 1, 2, 3 are trained from token 11, 25, 39
    cut = tokenize_conversation_examples(tokenizer, REASONING_CONVERSATION, max_length=30)
    assert [len(e.input_ids) for e in cut] == [21, 30, 30]
    assert [e.truncated_tokens for e in cut] == [0, 5, 19]
    assert [e.n_trained for e in cut] == [9, 5, 0]


def test_sft_recipe_trains_every_sequence_and_drops_those_cut_away():
    """The recipe's tokenisation step: a rewriting template's conversation becomes its sequences, minus any
    whose trained tokens truncation removed entirely."""
    from tuneforge.recipes.sft import tokenize_all

    tokenizer = tokenizer_with(QWEN3_LIKE)
    conversation = Conversation(messages=REASONING_CONVERSATION, line=1)
    assert len(tokenize_all(tokenizer, [conversation], max_length=512, path="train.jsonl")) == 3
    assert len(tokenize_all(tokenizer, [conversation], max_length=30, path="train.jsonl")) == 2


def test_sequences_are_in_conversation_order_and_each_turn_is_trained_once():
    tokenizer = tokenizer_with(QWEN3_LIKE)
    sequences = trained_sequences(tokenizer, REASONING_CONVERSATION)
    assert [len(spans) for _, spans in sequences] == [1, 1, 1]
    assert [len(text) for text, _ in sequences] == sorted(len(text) for text, _ in sequences)


def test_validate_accepts_what_training_accepts_for_a_template_that_rewrites_history(tmp_path):
    """The validator tokenises as SFT does: multi-turn rows under a Qwen3-like template are clean (each
    rewritten turn in its own sequence, every answer's end-of-turn trained), not `template_not_prefix_stable`."""
    from tests.conftest import write_jsonl
    from tuneforge.data.validate import validate_file

    tokenizer = tokenizer_with(QWEN3_LIKE)
    rows = [{"messages": REASONING_CONVERSATION} for _ in range(12)]
    report = validate_file(write_jsonl(tmp_path / "multi.jsonl", rows), "sft", tokenizer, max_length=512)
    assert report.ok, [f.code for f in report.errors]
    assert not report.counts.get("template_not_prefix_stable")
