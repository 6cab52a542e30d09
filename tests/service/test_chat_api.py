"""The chat API's features and back-pressure through the official openai SDK, against `tuneforge serve` on
loopback with the stand-in inference process (tests/service/fake_inference.py speaks the real protocol)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from conftest import fake_env, keyed_server, wait_for

from tuneforge.service.chat_completions import ChunkAssembler
from tuneforge.service.schemas import ChatCompletionCreate

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from keyed_server(tmp_path_factory, "chat")


def test_tool_calls_are_parsed_into_message_tool_calls(sdk):
    reply = sdk.chat.completions.create(
        model=BASE, messages=user('tool:get_weather {"city": "Paris"}'), tools=[WEATHER], tool_choice="auto"
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The conversation continues with the call and the tool's answer, as the SDK sends them back.
    follow_up = sdk.chat.completions.create(
        model=BASE,
        tools=[WEATHER],
        messages=[
            *user("weather?"),
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert follow_up.choices[0].message.content.endswith(": sunny") and follow_up.choices[0].finish_reason == "stop"

    # A call of a tool the request does not offer is just text; so is everything with tool_choice "none".
    other = sdk.chat.completions.create(model=BASE, messages=user('tool:rm_rf {"path": "/"}'), tools=[WEATHER])
    assert other.choices[0].message.tool_calls is None and "<tool_call>" in other.choices[0].message.content
    none = sdk.chat.completions.create(
        model=BASE, messages=user("tool:get_weather {}"), tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"


def test_forced_tool_choice_is_sent_as_a_constraint_and_parsed(sdk):
    reply = sdk.chat.completions.create(
        model=BASE,
        messages=user("hello"),
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_tool_calls_stream_as_openai_deltas(sdk):
    stream = sdk.chat.completions.create(
        model=BASE, messages=user('tool:get_weather {"city": "Oslo"}'), tools=[WEATHER], stream=True
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert json.loads("".join(call.function.arguments or "" for call in calls)) == {"city": "Oslo"}
    assert not "".join(d.content or "" for d in deltas)  # the call's text is not content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_n_choices_and_logprobs_in_openai_shape(sdk):
    reply = sdk.chat.completions.create(
        model=BASE, messages=user("one two"), n=3, logprobs=True, top_logprobs=2, temperature=0.7, seed=1
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    content = reply.choices[2].logprobs.content
    assert [entry.token for entry in content][-2:] == [" one", " two"]
    assert content[0].logprob == -0.5 and len(content[0].top_logprobs) == 2 and content[0].bytes
    assert reply.usage.completion_tokens == 3 * len(content)

    stream = sdk.chat.completions.create(
        model=BASE, messages=user("a b"), n=2, logprobs=True, stream=True, stream_options={"include_usage": True}
    )
    texts, entries = {0: "", 1: ""}, {0: [], 1: []}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            entries[choice.index] += choice.logprobs.content if choice.logprobs else []
    assert texts[0] == texts[1] == f"echo({BASE}): a b"
    assert "".join(entry.token for entry in entries[1]) == texts[1]


def test_json_response_formats_and_sampling_fields_reach_the_inference_process(sdk):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    reply = sdk.chat.completions.create(
        model=BASE,
        messages=user("hi"),
        response_format={"type": "json_schema", "json_schema": {"name": "echo", "schema": schema, "strict": True}},
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"42": -100},
        stop=["\n"],
        max_completion_tokens=20,
        user="u-1",
        metadata={"k": "v"},
        store=False,
    )
    assert json.loads(reply.choices[0].message.content) == {"echo": "hi"}
    reply = sdk.chat.completions.create(model=BASE, messages=user("hi"), response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == {"echo": "hi"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"store": True}, "store"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"n": 99}, "n"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "t", "schema": {"type": "object", "patternProperties": {"a": {}}}},
                }
            },
            "patternProperties",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "nope",
        ),
    ],
)
def test_unsupported_or_invalid_fields_are_400s_naming_them(sdk, extra, named):
    body = {"model": BASE, "messages": user("hi"), **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(**body)
    error = caught.value.body
    assert named in (error.get("param") or "") + error["message"], error


def test_many_requests_in_flight_at_once_and_a_slow_reader_stalls_no_one(start_server, tmp_path):
    server = start_server(workers=0, env=fake_env(TUNEFORGE_FAKE_TOKEN_DELAY="0.05"))
    key = server.create_key("acme")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    words = " ".join(f"w{i}" for i in range(20))  # 22 words at 0.05 s: ~1.1 s alone

    # A streaming client that reads one chunk and then stops reading for a while.
    slow = client.chat.completions.create(model=BASE, messages=user(words), stream=True)
    next(iter(slow))
    started = time.monotonic()
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(client.chat.completions.create(model=BASE, messages=user(words)))
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert len(results) == 8 and all(r.choices[0].message.content.endswith("w19") for r in results)
    assert elapsed < 4, f"8 concurrent requests took {elapsed:.1f}s: they were served one at a time"
    slow.close()


def test_full_queue_is_429_with_retry_after_and_timeouts_are_504_with_a_cancel(start_server, tmp_path):
    cancels = tmp_path / "cancels.log"
    env = fake_env(
        TUNEFORGE_FAKE_TOKEN_DELAY="0.2",
        TUNEFORGE_CHAT_MAX_PENDING="2",
        TUNEFORGE_CHAT_TIMEOUT_SECONDS="1.5",
        TUNEFORGE_FAKE_CANCEL_LOG=str(cancels),
    )
    server = start_server(workers=0, env=env)
    key = server.create_key("acme")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    long = " ".join(["word"] * 30)  # 6 s at 0.2 s a word: past the 1.5 s timeout

    errors = []

    def ask():
        try:
            client.chat.completions.create(model=BASE, messages=user(long))
        except openai.APIStatusError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both admitted and decoding
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=BASE, messages=user("one more"))
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["code"] == "rate_limit_exceeded"
    for thread in threads:
        thread.join()
    assert [e.status_code for e in errors] == [504, 504] and errors[0].body["code"] == "timeout"
    wait_for(lambda: len(cancels.read_text().splitlines()) == 2 if cancels.exists() else False, timeout=5)
    # The queue is free again once they ended.
    assert client.chat.completions.create(model=BASE, messages=user("ok")).choices[0].finish_reason == "stop"


def test_a_client_that_disconnects_cancels_its_generation(start_server, tmp_path):
    cancels = tmp_path / "cancels.log"
    env = fake_env(TUNEFORGE_FAKE_TOKEN_DELAY="0.2", TUNEFORGE_FAKE_CANCEL_LOG=str(cancels))
    server = start_server(workers=0, env=env)
    key = server.create_key("acme")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": BASE, "messages": user(" ".join(["word"] * 40))}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:  # the inference process is up
        assert http.post("/v1/chat/completions", json={**body, "max_tokens": 1}).status_code == 200

    # Streaming: read two events, then hang up.
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
    wait_for(lambda: cancels.exists() and len(cancels.read_text().splitlines()) == 1, timeout=5)

    # Not streaming: the request is abandoned by the client's timeout.
    with httpx.Client(base_url=server.url, headers=headers, timeout=0.6) as http:
        with pytest.raises(httpx.TimeoutException):
            http.post("/v1/chat/completions", json=body)
    wait_for(lambda: len(cancels.read_text().splitlines()) == 2, timeout=5)


def test_a_dead_inference_process_fails_its_requests_with_503_and_is_restarted(start_server, tmp_path):
    env = fake_env(TUNEFORGE_FAKE_TOKEN_DELAY="0.1")
    server = start_server(workers=0, env=env)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0)
    assert client.chat.completions.create(model=BASE, messages=user("warm up")).choices

    failures = []

    def ask():
        try:
            client.chat.completions.create(model=BASE, messages=user(" ".join(["w"] * 50)))
        except openai.APIStatusError as exc:
            failures.append(exc.status_code)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.5)
    import subprocess

    found = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "fake_inference.py"], capture_output=True, text=True
    )
    children = [int(pid) for pid in found.stdout.split()]
    assert children, "the inference stand-in is not a child of the server"
    import os
    import signal

    for pid in children:  # the stand-in this test's server started, by its id
        os.kill(pid, signal.SIGKILL)
    thread.join()
    assert failures == [503]
    assert (
        client.chat.completions.create(model=BASE, messages=user("again")).choices[0].message.content.endswith("again")
    )


def test_chunk_assembler_holds_back_a_split_tool_call_tag():
    """Unit: pieces that split '<tool_call>' across tokens never leak the tag as content."""
    body = ChatCompletionCreate.model_validate({"model": BASE, "messages": user("x"), "tools": [WEATHER]})
    assembler = ChunkAssembler(body, "chatcmpl-1", 0)
    pieces = [
        "Let me check. <tool",
        "_ca",
        'll>\n{"name": "get_weather", ',
        '"arguments": {"city": "Rome"}}\n</tool_',
        "call>",
    ]
    chunks = [c for piece in pieces for c in assembler.piece({"index": 0, "token": piece})]
    chunks += assembler.ending({"choices": [{"index": 0, "finish_reason": "stop"}]}, include_usage=False)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content.strip() == "Let me check."
    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "get_weather" and json.loads(calls[1]["function"]["arguments"]) == {
        "city": "Rome"
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
