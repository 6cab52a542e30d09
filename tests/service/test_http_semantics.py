"""HTTP semantics the SDK relies on: a non-retryable 409 says `x-should-retry: false`, so the openai SDK raises
after one request instead of three; `jobs.list(metadata=...)` filters (exact keys, `metadata=null`, pagination)
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from conftest import chat_rows, write_jsonl

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


def counting_client(base_url: str, key: str) -> tuple[openai.OpenAI, list[str]]:
    """An SDK client with its default retries that records every request it actually sends."""
    sent: list[str] = []
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=2, http_client=http_client), sent


def test_a_409_without_the_header_is_retried_by_the_sdk():
    """The control: what the SDK does to a bare 409 (as the service answered before), so the test below can fail."""

    class Conflict(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"error": {"message": "conflict", "type": "invalid_request_error", "param": null, "code": null}}'
            self.send_response(409)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Conflict)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client, sent = counting_client(f"http://127.0.0.1:{server.server_address[1]}/v1", "key")
        with pytest.raises(openai.ConflictError):
            client.fine_tuning.jobs.cancel("ftjob-x")
        assert len(sent) == 3
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def idle_service(start_server):
    """A server without workers: jobs stay where the API put them."""
    server = start_server(workers=0)
    return server, server.create_key("acme")


def test_non_retryable_409s_are_sent_once(idle_service, tmp_path):
    server, key = idle_service
    client, sent = counting_client(server.url + "/v1", key)
    training = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    client.fine_tuning.jobs.cancel(job.id)

    calls = {
        "cancel a finished job": lambda: client.fine_tuning.jobs.cancel(job.id),
        "resume a job that is not paused": lambda: client.fine_tuning.jobs.resume(job.id),
        "reuse an Idempotency-Key with another body": lambda: client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, suffix="other", extra_headers={"Idempotency-Key": "k1"}
        ),
    }
    client.fine_tuning.jobs.create(model=BASE, training_file=training.id, extra_headers={"Idempotency-Key": "k1"})
    for what, call in calls.items():
        sent.clear()
        with pytest.raises(openai.ConflictError) as caught:
            call()
        assert len(sent) == 1, what
        assert caught.value.response.headers["x-should-retry"] == "false", what
    # 400 and 404 say so too (the SDK would not retry them anyway); a 5xx stays retryable.
    for path, status in (("/v1/fine_tuning/jobs/ftjob-missing", 404), ("/v1/fine_tuning/jobs?limit=0", 400)):
        response = httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"})
        assert (response.status_code, response.headers.get("x-should-retry")) == (status, "false")


TRICKY = {
    "plain": "a",
    "with space": "b",
    'q"uote': "c",
    "back\\slash": "d",
    "ünï": "é",
    "50%_off": "x_y%",
    "a.b[0]": "$",
}


def check_metadata_filter(client: openai.OpenAI, training_id: str) -> None:
    made = {}
    for name, value in TRICKY.items():
        made[name] = client.fine_tuning.jobs.create(
            model=BASE, training_file=training_id, metadata={name: value, "team": "ml"}
        ).id
    bare = client.fine_tuning.jobs.create(model=BASE, training_file=training_id).id
    similar = client.fine_tuning.jobs.create(model=BASE, training_file=training_id, metadata={"plain": "ab"}).id
    for name, value in TRICKY.items():
        found = [job.id for job in client.fine_tuning.jobs.list(metadata={name: value})]
        assert found == [made[name]], name
        assert [job.id for job in client.fine_tuning.jobs.list(metadata={name: value, "team": "ml"})] == [made[name]]
        assert list(client.fine_tuning.jobs.list(metadata={name: value, "team": "other"})) == []
    # LIKE's wildcards in the value match only themselves.
    assert [job.id for job in client.fine_tuning.jobs.list(metadata={"50%_off": "x%"})] == []
    assert similar not in [job.id for job in client.fine_tuning.jobs.list(metadata={"plain": "a"})]

    # Pagination over the filtered jobs, newest first, as without a filter.
    everyone = list(reversed(list(made.values())))
    first = client.fine_tuning.jobs.list(metadata={"team": "ml"}, limit=3)
    assert [job.id for job in first.data] == everyone[:3] and first.has_more
    rest = client.fine_tuning.jobs.list(metadata={"team": "ml"}, limit=10, after=first.data[-1].id)
    assert [job.id for job in rest.data] == everyone[3:] and not rest.has_more
    assert [job.id for job in client.fine_tuning.jobs.list(metadata={"team": "ml"})] == everyone  # auto-paging

    # metadata=null: the jobs without metadata; and the two forms do not combine.
    assert [job.id for job in client.fine_tuning.jobs.list(extra_query={"metadata": "null"})] == [bare]
    # (the SDK lets extra_query replace its metadata param, so this request is written by hand)
    response = httpx.get(
        str(client.base_url) + "fine_tuning/jobs",
        params=[("metadata", "null"), ("metadata[team]", "ml")],
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"


def test_metadata_filter_on_sqlite(idle_service, tmp_path):
    server, key = idle_service
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)
    training = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    check_metadata_filter(client, training.id)


def test_metadata_filter_on_postgres(start_server, postgres_url, tmp_path):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute('DROP DATABASE IF EXISTS "metadata_filter"')
        connection.execute('CREATE DATABASE "metadata_filter"')
    server = start_server(workers=0, database_url=postgres_url.rsplit("/", 1)[0] + "/metadata_filter")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"))
    training = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    check_metadata_filter(client, training.id)
