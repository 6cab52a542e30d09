"""The API's other routes against a small database pool (issue 19, after the chat fix): a burst of requests
through the official SDK's AsyncOpenAI, many more than the pool has connections and than anyio has worker
threads, on SQLite and PostgreSQL. Each must be answered, none with a 500 from a pool timeout."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from conftest import chat_rows, fake_env

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"
POOL_SIZE = 2
# More than anyio's 40 worker threads plus the pool: what it took for requests that held a connection while
# waiting for a thread to starve behind threads waiting for a connection.
REQUESTS = 64
TRAINING_FILE = "".join(json.dumps(row) + "\n" for row in chat_rows(2)).encode()


async def burst(base_url: str, key: str, count: int) -> list[tuple[str, object]]:
    """`count` requests at once, taking turns over three routes: (route, its answer or the error it got)."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120) as client:

        async def call(number: int) -> tuple[str, object]:
            route = ("models.list", "files.create", "jobs.list")[number % 3]
            try:
                if route == "models.list":
                    return route, await client.models.list()
                if route == "files.create":
                    upload = (f"burst{number}.jsonl", TRAINING_FILE)
                    return route, await client.files.create(file=upload, purpose="fine-tune")
                return route, await client.fine_tuning.jobs.list()
            except openai.APIError as exc:
                return route, exc

        return await asyncio.gather(*(call(number) for number in range(count)))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_burst_far_past_the_pool_is_answered_on_every_route(database, request, start_server):
    database_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    env = fake_env(
        TUNEFORGE_DATABASE_POOL_SIZE=str(POOL_SIZE),
        TUNEFORGE_DATABASE_MAX_OVERFLOW="0",
        TUNEFORGE_DATABASE_POOL_TIMEOUT_SECONDS="5",
    )
    server = start_server(workers=0, database_url=database_url, env=env)
    key = server.create_key(f"burst{database}")

    answers = asyncio.run(burst(server.url + "/v1", key, REQUESTS))

    failed = [(route, answer) for route, answer in answers if isinstance(answer, Exception)]
    assert not failed, f"{len(failed)} of {REQUESTS} requests failed, e.g. {failed[:3]}"
    for route, answer in answers:
        if route == "models.list":
            assert [model.id for model in answer.data] == [BASE]
        elif route == "jobs.list":
            assert answer.data == []
    uploaded = sorted(answer.filename for route, answer in answers if route == "files.create")
    assert uploaded == sorted(f"burst{number}.jsonl" for number in range(REQUESTS) if number % 3 == 1)
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as client:
        stored = sorted(stored.filename for stored in client.files.list())
    assert stored == uploaded
    assert "Traceback" not in server.log.read_text()
