"""Tool calls read back from a model's text (tuneforge/tool_calls.py), in the shapes chat templates write them,
whole and streamed piece by piece."""

from __future__ import annotations

import copy
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_tokenizer
from tuneforge.data.formats import row_to_conversation
from tuneforge.data.tokenize import render
from tuneforge.tool_calls import ToolCall, ToolCallStream, parse_tool_calls, template_tool_format

NAMES = {"get_weather", "add"}
# A Hermes/Qwen-style template (the part that writes tool calls), as a fine-tune's own template would be.
HERMES = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for call in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_what_training_renders_through_a_hermes_template_is_read_back_as_the_rows_calls():
    """The row goes through the project's own data path (row -> messages -> template text); the assistant's
    rendered turn is what a model fine-tuned on it learns to write, so the parser must read it back."""
    tokenizer = copy.deepcopy(make_tokenizer())
    tokenizer.chat_template = HERMES
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
    ]
    row = {
        "messages": [
            {"role": "user", "content": "weather in Paris, and 1 + 2?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
        ],
        "tools": [{"type": "function", "function": {"name": name}} for name in sorted(NAMES)],
    }
    conversation = row_to_conversation(row)
    prompt = render(tokenizer, conversation.messages[:1], conversation.tools, add_generation_prompt=True)
    full = render(tokenizer, conversation.messages, conversation.tools)
    answer = full[len(prompt) :].split("<|im_end|>")[0]  # generation ends at the end-of-turn token
    assert template_tool_format(HERMES) == "hermes"
    content, parsed = parse_tool_calls(answer, NAMES)
    assert content is None
    assert parsed == [ToolCall("get_weather", {"city": "Paris"}), ToolCall("add", {"a": 1, "b": 2})]
    assert json.loads(parsed[0].openai()["function"]["arguments"]) == {"city": "Paris"}


def test_the_shapes_templates_write():
    assert parse_tool_calls('Sure.\n<tool_call>\n[{"name": "add", "arguments": {"a": 1}}]\n</tool_call>', NAMES) == (
        "Sure.",
        [ToolCall("add", {"a": 1})],
    )
    llama = '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "get_weather", "parameters": {}}'
    assert parse_tool_calls(llama, NAMES) == (None, [ToolCall("add", {"a": 1}), ToolCall("get_weather", {})])
    mistral = '[TOOL_CALLS] [{"name": "add", "arguments": {"b": 2}}]'
    assert parse_tool_calls(mistral, NAMES) == (None, [ToolCall("add", {"b": 2})])
    assert parse_tool_calls('{"name": "add", "arguments": "{\\"a\\": 3}"}', NAMES) == (
        None,
        [ToolCall("add", {"a": 3})],
    )


def test_text_that_is_not_a_call_of_a_given_tool_stays_content():
    for text in [
        'The JSON is {"name": "x"}',
        '{"name": "rm_rf", "arguments": {}}',  # not one of the tools
        '{"name": "add", "arguments": [1, 2]}',  # arguments must be an object
        "<tool_call>not json</tool_call>",
        '{"answer": 42}',
        "",
    ]:
        assert parse_tool_calls(text, NAMES) == (text, []), text


TEXTS = [
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
    '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>',
    '{"name": "add", "parameters": {"a": 1}}',
    "Just an answer with <tool and {braces}.",
    "<tool_call>broken</tool_call> and more",
    '  {"not": "a call"}',
]


@given(text=st.sampled_from(TEXTS), cuts=st.lists(st.integers(0, 120), max_size=12))
def test_streaming_in_any_pieces_gives_what_parsing_the_whole_gives(text, cuts):
    points = sorted({c for c in cuts if c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    stream = ToolCallStream(NAMES)
    events = [event for piece in pieces for event in stream.feed(piece)] + stream.finish()
    content = "".join(value for kind, value in events if kind == "content")
    calls = [value for kind, value in events if kind == "call"]
    whole_content, whole_calls = parse_tool_calls(text, NAMES)
    assert calls == whole_calls
    assert content.strip() == (whole_content or "").strip()
