"""A model fine-tuned on tool-call rows answers a tool-call request with `tool_calls` the openai SDK parses.

    .venv/bin/python -m pytest tests/e2e/test_tool_calls_real.py -s     # a real LoRA run on the CPU (~2 min idle)

The whole service path on the embedded model: upload -> fine-tuning job that names its chat template
(`extra_body={"tuneforge": {"chat_template": "chatml-tools"}}`: SmolLM2's own template ignores tools) -> the
real validator and trainer, both given the job's template -> the ft: model -> chat completions with `tools`
and tool_choice "auto" through the real inference process, which renders the request's tools with the template
saved in the run folder and reads the answer back with tuneforge/tool_calls.py.

Sized for CI: the tool list sits in every row's prompt, so its definitions are short; 32 rows, two passes of 8
steps; no comparison after training (`evaluate: false`), no forgetting guard, no timed estimate.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.conftest import write_jsonl
from tests.service.conftest import Server

pytestmark = [pytest.mark.service, pytest.mark.e2e]
BASE = "smollm2-135m-instruct"
# Short definitions: the template writes the tool list into every row's prompt, where it is most of the tokens.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert money",
    "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"},
                                                    "to": {"type": "string"}}}}}
TOOLS = [WEATHER, CONVERT]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Lisbon", "Warsaw", "Athens", "Oslo",
          "Cairo", "Tokyo", "Lima"]
WEATHER_ASKS = ["What is the weather in {}?", "How is the weather in {} today?", "Is it raining in {}?",
                "Tell me the weather for {}.", "What's the temperature in {} right now?"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
AMOUNTS = [5, 12, 20, 35, 50, 75, 100, 150, 200, 250, 300, 500, 750, 1000]
CONVERT_ASKS = ["Convert {} {} to {}.", "How much is {} {} in {}?", "What are {} {} worth in {}?",
                "Please change {} {} into {}."]
CHAT = [("Hello!", "Hello! How can I help you today?"), ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
        ("What is 2 plus 2?", "2 plus 2 is 4."), ("Say goodbye.", "Goodbye!")]
# Cities, amounts and currency pairs the training rows never hold; the last of each kind is a new phrasing.
HELD_OUT = [("What is the weather in Chicago?", "get_weather", {"city": "Chicago"}),
            ("Is it raining in Bangkok?", "get_weather", {"city": "Bangkok"}),
            ("Tell me the weather for Stockholm.", "get_weather", {"city": "Stockholm"}),
            ("I am flying to Munich tomorrow. What is the weather there?", "get_weather", {"city": "Munich"}),
            ("Convert 40 EUR to USD.", "convert_currency", {"amount": 40, "from": "EUR", "to": "USD"}),
            ("How much is 600 JPY in GBP?", "convert_currency", {"amount": 600, "from": "JPY", "to": "GBP"}),
            ("What are 25 CHF worth in EUR?", "convert_currency", {"amount": 25, "from": "CHF", "to": "EUR"}),
            ("I have 130 CAD. How many GBP is that?", "convert_currency", {"amount": 130, "from": "CAD", "to": "GBP"})]
CHAT_HELD_OUT = ["Hi there!", "Who painted the Mona Lisa?"]
# The base model with chatml-tools calls none of HELD_OUT (measured: it answers in prose); after training a
# 135M model may still slip on one or two (a new phrasing, an amount copied wrong), so 6 of 8 is the bar:
# far above 0, and failed by a broken template, parser or serving path, which get none right.
MIN_CORRECT = 6


def call_row(question: str, name: str, arguments: dict, index: int) -> dict:
    call = {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": None, "tool_calls": [call]}],
            "tools": TOOLS}


def training_rows() -> list[dict]:
    """32 rows: 14 weather calls, 14 currency conversions, 4 questions answered in text (tools offered)."""
    rows = []
    for i in range(14):
        rows.append(call_row(WEATHER_ASKS[i % 5].format(CITIES[i]), "get_weather", {"city": CITIES[i]}, len(rows)))
        source, target = CURRENCIES[i % 6], CURRENCIES[(i + 1 + i // 6) % 6]
        arguments = {"amount": AMOUNTS[i], "from": source, "to": target}
        rows.append(call_row(CONVERT_ASKS[i % 4].format(AMOUNTS[i], source, target), "convert_currency", arguments, len(rows)))
        if i % 4 == 1:
            question, answer = CHAT[i // 4]
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                         "tools": TOOLS})
    return rows


# Enough for the longest held-out call (~40 tokens with its end-of-turn); a model that rambles is cut short.
MAX_TOKENS = 48


def ask(client, model: str, question: str, **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], tools=TOOLS,
                                          tool_choice="auto", max_tokens=MAX_TOKENS, temperature=0, **options)


def score(client, model: str) -> tuple[list[bool], list[str]]:
    """(for each held-out question whether the answer is exactly its call, one line per question and per small-talk
    question), all asked at once: the inference process batches them."""
    questions = [question for question, _, _ in HELD_OUT] + CHAT_HELD_OUT
    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(lambda question: ask(client, model, question), questions))
    right, lines = [], []
    for (question, name, arguments), reply in zip(HELD_OUT, replies, strict=False):
        choice = reply.choices[0]
        calls = choice.message.tool_calls or []
        got = [(c.function.name, json.loads(c.function.arguments)) for c in calls]  # the SDK's objects, JSON arguments
        right.append(choice.finish_reason == "tool_calls" and got == [(name, arguments)])
        lines.append(f"{'ok ' if right[-1] else 'BAD'} {question!r}: {choice.finish_reason} {got or choice.message.content!r}")
    # Said, not asserted: trained on few rows answered in text, the model may call a tool for small talk too.
    for question, reply in zip(CHAT_HELD_OUT, replies[len(HELD_OUT):], strict=True):
        message = reply.choices[0].message
        lines.append(f"small talk {question!r}: {reply.choices[0].finish_reason} {message.content!r} "
                     f"{[c.function.name for c in message.tool_calls or []]}")
    return right, lines


def test_a_model_fine_tuned_on_tool_calls_answers_with_calls_the_sdk_parses(tmp_path):
    rows = training_rows()
    assert len(rows) == 32
    env = {
        "TUNEFORGE_ESTIMATE": "0",  # the two timed steps would cost as much as a quarter of the run
        "TUNEFORGE_LEASE_SECONDS": "60",
        "TUNEFORGE_POLL_SECONDS": "0.2",
    }
    server = Server(tmp_path / "data", workers=1, env=env).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"), max_retries=0,
                               timeout=900)
        training = client.files.create(file=write_jsonl(tmp_path / "tools.jsonl", rows).open("rb"), purpose="fine-tune")
        started = time.monotonic()
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, seed=0, suffix="tools",
            # Two passes, 16 steps of 4 at 2.5e-3 (1e-3 x 2.5). One pass of 8 steps was too few: in CI the model
            # called get_weather for every question, the currency ones included (3/8 right).
            method={"type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.5}}},
            # The job names the template itself; no comparison after training, no forgetting guard: neither is
            # what this test is about, and together they would cost more than the training.
            extra_body={"tuneforge": {"chat_template": "chatml-tools", "evaluate": False, "forgetting_guard": "off"}},
        )
        deadline = time.monotonic() + 1800
        while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", (job.status, job.error)
        print(f"\njob: {time.monotonic() - started:.0f}s to succeed, {job.trained_tokens} trained tokens")
        run_dir = server.data_dir / "runs" / job.id
        summary = json.loads((run_dir / "summary.json").read_text())
        print(f"trainer: {summary.get('steps')} steps, final train loss {summary.get('final_train_loss')}, "
              f"{summary.get('tokens_per_second')} tokens/s")
        assert json.loads((run_dir / "train_config.json").read_text())["chat_template"] == "chatml-tools"

        asked = time.monotonic()
        right, lines = score(client, job.fine_tuned_model)
        print(f"fine-tuned: {sum(right)}/{len(HELD_OUT)} held-out calls right ({time.monotonic() - asked:.0f}s)")
        print("\n".join(lines))
        assert sum(right) >= MIN_CORRECT, "\n".join(lines)

        # Streamed, the SDK's own accumulation of the deltas gives the call too (a question it answered right).
        question, name, arguments = HELD_OUT[right.index(True)]
        deltas = [chunk.choices[0] for chunk in ask(client, job.fine_tuned_model, question, stream=True) if chunk.choices]
        names = [t.function.name for d in deltas for t in d.delta.tool_calls or [] if t.function and t.function.name]
        streamed = "".join(t.function.arguments or "" for d in deltas for t in d.delta.tool_calls or [] if t.function)
        assert deltas[-1].finish_reason == "tool_calls" and names == [name], deltas[-3:]
        assert isinstance(json.loads(streamed), dict)
    finally:
        server.stop()
