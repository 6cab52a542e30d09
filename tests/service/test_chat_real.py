"""The chat API's structured output and tool calls on the embedded model, through the openai SDK, with the
real inference process (tuneforge/serving.py's engine and tuneforge/constrained.py's grammars)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import fake_env

pytestmark = [pytest.mark.service, pytest.mark.e2e]
BASE = "smollm2-135m-instruct"
TICKET = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "shipping", "refund"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "urgent": {"type": "boolean"},
    },
    "required": ["category", "priority", "summary", "tags", "urgent"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def test_json_schema_and_forced_tool_calls_on_the_embedded_model(start_server):
    env = {k: v for k, v in fake_env().items() if "INFERENCE_COMMAND" not in k}  # the real inference process
    server = start_server(workers=0, env=env)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0, timeout=600)
    ask = [{"role": "user", "content": "My parcel never arrived and I want my money back. Classify this ticket."}]

    reply = client.chat.completions.create(
        model=BASE,
        messages=ask,
        max_tokens=120,
        temperature=0.8,
        seed=3,
        n=2,
        response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET, "strict": True}},
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), TICKET)

    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # exactly one call (with parallel calls allowed, this model calls again and again)
        max_tokens=80,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    # Streamed, the SDK's own accumulation gives the same call.
    stream = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Weather in Oslo, in celsius?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    deltas = [c.choices[0] for c in stream if c.choices]
    arguments = "".join(t.function.arguments or "" for d in deltas for t in d.delta.tool_calls or [])
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert deltas[-1].finish_reason == "tool_calls"

    # An unsupported schema keyword is refused before any token is spent.
    with pytest.raises(openai.BadRequestError, match="format"):
        client.chat.completions.create(
            model=BASE,
            messages=ask,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "t", "schema": {"type": "string", "format": "date-time"}},
            },
        )
