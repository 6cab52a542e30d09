"""Chat completions against a small database pool (issue 19): many streams in flight at once, through the
official SDK's AsyncOpenAI, on SQLite and PostgreSQL. The stand-in inference process holds every answer until
all of them have arrived, so the server has them all open at the same moment."""

from __future__ import annotations

import asyncio

import openai
import pytest
from conftest import fake_env
from sqlalchemy import select

from tuneforge.service.schemas import fine_tuned_name
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, Org, make_engine, make_sessionmaker, new_id

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"
POOL_SIZE = 2
# More than anyio's 40 worker threads plus the pool: what it took for requests that held a connection while
# waiting for a thread to starve behind threads waiting for a connection (the report's 64 streams).
STREAMS = 64
MODELS = 4


def publish_models(server, org_name: str, count: int) -> list[tuple[str, str]]:
    """(fine-tuned model id, job id) for `count` succeeded jobs of the org, written as the worker would leave
    them; the stand-in inference process names an adapter by its folder, the job id."""
    url = Settings(data_dir=server.data_dir, database_url=server.database_url).url
    engine = make_engine(url)
    published = []
    with make_sessionmaker(engine)() as session:
        org = session.scalar(select(Org).where(Org.name == org_name))
        for number in range(count):
            job_id = new_id("ftjob")
            name = fine_tuned_name(BASE, org_name, f"s{number}", job_id)
            session.add(
                Job(
                    id=job_id,
                    org_id=org.id,
                    model=BASE,
                    training_file="file-1",
                    seed=number,
                    status="succeeded",
                    ft_name=name,
                    fine_tuned_model=name,
                )
            )
            published.append((name, job_id))
        session.commit()
    engine.dispose()
    return published


async def stream_all(base_url: str, key: str, requests: list[tuple[str, str]]) -> list[str]:
    """Each (model, question) streamed at once; each answer's text, or the error that ended it."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120) as client:

        async def ask(model: str, question: str) -> str:
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], stream=True
                )
                return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            except openai.APIError as exc:
                return f"{type(exc).__name__}: {exc}"

        return await asyncio.gather(*(ask(model, question) for model, question in requests))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_many_more_streams_than_database_connections_all_finish(database, request, start_server):
    database_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    env = fake_env(
        TUNEFORGE_FAKE_HOLD_UNTIL=str(STREAMS),
        TUNEFORGE_DATABASE_POOL_SIZE=str(POOL_SIZE),
        TUNEFORGE_DATABASE_MAX_OVERFLOW="0",
        TUNEFORGE_DATABASE_POOL_TIMEOUT_SECONDS="5",
    )
    server = start_server(workers=0, database_url=database_url, env=env)
    org_name = f"streams{database}"
    key = server.create_key(org_name)
    models = publish_models(server, org_name, MODELS)

    requests = [(models[i % MODELS][0], f"question {i}") for i in range(STREAMS)]
    answers = asyncio.run(stream_all(server.url + "/v1", key, requests))

    expected = [f"echo({BASE}+{models[i % MODELS][1]}): question {i}" for i in range(STREAMS)]
    wrong = [answer for answer, right in zip(answers, expected, strict=True) if answer != right]
    assert not wrong, f"{len(wrong)} of {STREAMS} streams failed, e.g. {wrong[:3]}"
    assert "Traceback" not in server.log.read_text()
