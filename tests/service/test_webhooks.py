"""Webhooks: job ends POSTed to a real receiver on loopback, signed so that the openai SDK's
`webhooks.unwrap` accepts them; retried with back-off after 5xx, given up after the last attempt; kept in the
database across a server's death; each sent once when two deliverers share the database."""

from __future__ import annotations

import itertools
import json
import threading
import time

import openai
import pytest
from conftest import chat_rows, fake_env, wait_for, write_jsonl
from sqlalchemy import select
from webhook_receiver import Receiver

from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, WebhookDelivery, make_engine, make_sessionmaker
from tuneforge.service.webhooks import Deliverer, backoff_seconds, new_secret, record_job_event, secret_key

pytestmark = pytest.mark.service
BASE = "smollm2-135m-instruct"


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


def settings_for(tmp_path, urls, secret, database_url=None, **values) -> Settings:
    settings = Settings(data_dir=tmp_path, database_url=database_url, webhook_urls=tuple(urls), webhook_secret=secret)
    settings.poll_seconds = 0.05
    settings.webhook_retry_seconds = 0.2
    for key, value in values.items():
        setattr(settings, key, value)
    return settings


def record(settings: Settings, job_id: str, status: str, org_id: str = "org-1") -> str:
    """A job reaching `status`, as the worker's _finish and the cancel route record it."""
    with make_sessionmaker(make_engine(settings.url))() as session:
        event = record_job_event(session, Job(id=job_id, org_id=org_id), status)
        session.commit()
        return event.id


def unwrap(secret: str, request: dict):
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(request["body"], request["headers"])


def deliveries(settings: Settings) -> list[WebhookDelivery]:
    with make_sessionmaker(make_engine(settings.url))() as session:
        return session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.seq)).all()


def test_the_sdk_verifies_our_signature_and_reads_the_event(tmp_path, receiver):
    endpoint, secret = receiver(), new_secret()
    settings = settings_for(tmp_path, [endpoint.url], secret)
    event_id = record(settings, "ftjob-abc", "succeeded")
    assert Deliverer(settings).run_once() == 1

    (request,) = endpoint.received
    event = unwrap(secret, request)
    assert (event.id, event.type, event.data.id, event.object) == (
        event_id,
        "fine_tuning.job.succeeded",
        "ftjob-abc",
        "event",
    )
    assert isinstance(event, openai.types.webhooks.FineTuningJobSucceededWebhookEvent)
    assert request["headers"]["webhook-signature"].startswith("v1,")
    assert request["headers"]["webhook-id"].startswith("wh_")
    # Any change to the body, or another secret, fails verification.
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(secret, {**request, "body": request["body"].replace(b"ftjob-abc", b"ftjob-xyz")})
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(new_secret(), request)


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_each_final_state_has_its_event_type(tmp_path, receiver, status):
    endpoint, secret = receiver(), new_secret()
    settings = settings_for(tmp_path, [endpoint.url], secret)
    record(settings, "ftjob-1", status)
    Deliverer(settings).run_once()
    assert unwrap(secret, endpoint.received[0]).type == f"fine_tuning.job.{status}"


def test_a_plain_text_secret_signs_too(tmp_path, receiver):
    """The SDK takes a secret without whsec_ as its UTF-8 bytes; so do we."""
    endpoint = receiver()
    settings = settings_for(tmp_path, [endpoint.url], "plain text secret")
    record(settings, "ftjob-1", "succeeded")
    Deliverer(settings).run_once()
    assert unwrap("plain text secret", endpoint.received[0]).data.id == "ftjob-1"
    assert secret_key("plain text secret") == b"plain text secret"
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")


def test_every_configured_url_gets_the_event(tmp_path, receiver):
    first, second, secret = receiver(), receiver(), new_secret()
    settings = settings_for(tmp_path, [first.url, second.url], secret)
    record(settings, "ftjob-1", "succeeded")
    assert Deliverer(settings).run_once() == 2
    assert unwrap(secret, first.received[0]).id == unwrap(secret, second.received[0]).id


def test_5xx_is_retried_with_growing_backoff_under_the_same_webhook_id(tmp_path, receiver):
    endpoint, secret = receiver(first=[500, 503]), new_secret()
    settings = settings_for(tmp_path, [endpoint.url], secret)
    record(settings, "ftjob-1", "succeeded")
    deliverer = Deliverer(settings).start()
    try:
        wait_for(lambda: endpoint.answered(200), timeout=20)
    finally:
        deliverer.stop()
    assert [request["status"] for request in endpoint.received] == [500, 503, 200]
    assert len({request["headers"]["webhook-id"] for request in endpoint.received}) == 1
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(endpoint.received)]
    assert gaps[0] >= backoff_seconds(1, 0.2) and gaps[1] >= backoff_seconds(2, 0.2) == 0.4
    (delivery,) = deliveries(settings)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("delivered", 3, 200)
    assert unwrap(secret, endpoint.received[-1]).data.id == "ftjob-1"  # signed afresh on each attempt


def test_gives_up_after_the_last_attempt(tmp_path, receiver):
    endpoint = receiver(then=500)
    settings = settings_for(tmp_path, [endpoint.url], new_secret(), webhook_max_attempts=3, webhook_retry_seconds=0.05)
    record(settings, "ftjob-1", "failed")
    deliverer = Deliverer(settings).start()
    try:
        wait_for(lambda: [d.status for d in deliveries(settings)] == ["failed"], timeout=20)
        time.sleep(0.5)  # nothing more goes out
    finally:
        deliverer.stop()
    assert len(endpoint.received) == 3
    assert deliveries(settings)[0].last_error == "HTTP 500"


def test_an_unreachable_url_is_retried_like_a_5xx(tmp_path, receiver):
    endpoint = receiver()
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    endpoint.close()  # nothing listens there now
    settings = settings_for(tmp_path, [f"http://127.0.0.1:{port}/hooks"], new_secret())
    record(settings, "ftjob-1", "succeeded")
    Deliverer(settings).run_once()
    (delivery,) = deliveries(settings)
    assert delivery.status == "pending" and delivery.attempts == 1 and "ConnectError" in delivery.last_error


def test_a_pending_delivery_outlives_its_deliverer(tmp_path, receiver):
    endpoint, secret = receiver(first=[500]), new_secret()
    settings = settings_for(tmp_path, [endpoint.url], secret)
    record(settings, "ftjob-1", "succeeded")
    Deliverer(settings).run_once()  # answered 500; this deliverer is gone now
    assert deliveries(settings)[0].status == "pending"
    time.sleep(0.25)
    Deliverer(settings).run_once()  # a new one (a restarted server) continues from the database
    assert [request["status"] for request in endpoint.received] == [500, 200]
    assert deliveries(settings)[0].status == "delivered"


def run_two_deliverers(settings: Settings, count: int) -> None:
    for number in range(count):
        record(settings, f"ftjob-{number}", "succeeded")
    pair = [Deliverer(settings, deliverer_id=name) for name in ("a", "b")]
    threads = [threading.Thread(target=deliverer.run_once) for deliverer in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for deliverer in pair:  # whatever either left (none should be left)
        deliverer.run_once()
        deliverer.client.close()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_deliverers_send_each_delivery_once(tmp_path, receiver, request, database):
    database_url = None
    if database == "postgres":
        import psycopg

        base = request.getfixturevalue("postgres_url")
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute('DROP DATABASE IF EXISTS "webhooks_twice"')
            connection.execute('CREATE DATABASE "webhooks_twice"')
        database_url = base.rsplit("/", 1)[0] + "/webhooks_twice"
    endpoint = receiver(delay=0.02)  # slow enough that the two overlap
    settings = settings_for(tmp_path, [endpoint.url], new_secret(), database_url=database_url)
    run_two_deliverers(settings, 24)
    ids = [request["headers"]["webhook-id"] for request in endpoint.received]
    assert len(ids) == 24 and len(set(ids)) == 24
    bodies = {json.loads(request["body"])["data"]["id"] for request in endpoint.received}
    assert bodies == {f"ftjob-{number}" for number in range(24)}
    assert {delivery.status for delivery in deliveries(settings)} == {"delivered"}


def test_serve_refuses_urls_without_a_secret_and_suggests_one(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.service", "serve", "--data-dir", str(tmp_path), "--webhook-url", "http://x/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--webhook-secret" in done.stderr and "whsec_" in done.stderr


# --- through the service ---------------------------------------------------------------------------------


def webhook_env(endpoint: Receiver, secret: str) -> dict:
    return fake_env(
        TUNEFORGE_WEBHOOK_URLS=endpoint.url, TUNEFORGE_WEBHOOK_SECRET=secret, TUNEFORGE_WEBHOOK_RETRY_SECONDS="0.3"
    )


def marked(marker: str) -> list[dict]:
    """Rows the fake trainer reads as CRASH (exits 3) or SLOW (runs until stopped)."""
    return [*chat_rows(3), {"messages": [{"role": "user", "content": marker}, {"role": "assistant", "content": "ok"}]}]


def test_job_ends_reach_the_receiver_through_the_service(start_server, tmp_path, receiver):
    endpoint, secret = receiver(first=[500]), new_secret()
    server = start_server(env=webhook_env(endpoint, secret))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.create_key("acme"))

    def upload(name, rows):
        return client.files.create(file=write_jsonl(tmp_path / name, rows).open("rb"), purpose="fine-tune").id

    good = client.fine_tuning.jobs.create(model=BASE, training_file=upload("good.jsonl", chat_rows(4)))
    crash = client.fine_tuning.jobs.create(model=BASE, training_file=upload("crash.jsonl", marked("CRASH")))
    slow = client.fine_tuning.jobs.create(model=BASE, training_file=upload("slow.jsonl", marked("SLOW")))
    wait_for(lambda: client.fine_tuning.jobs.retrieve(slow.id).status == "running", timeout=60)
    client.fine_tuning.jobs.cancel(slow.id)

    wait_for(lambda: len(endpoint.answered(200)) == 3, timeout=60)
    events = {unwrap(secret, request).data.id: unwrap(secret, request).type for request in endpoint.answered(200)}
    assert events == {
        good.id: "fine_tuning.job.succeeded",
        crash.id: "fine_tuning.job.failed",
        slow.id: "fine_tuning.job.cancelled",
    }
    assert [request["status"] for request in endpoint.received].count(500) == 1  # the first was retried
    time.sleep(1)
    assert len(endpoint.received) == 4  # and nothing was sent twice


def test_a_delivery_survives_the_server_being_killed(start_server, tmp_path, receiver):
    endpoint, secret = receiver(then=503), new_secret()
    first = start_server(env=webhook_env(endpoint, secret))
    client = openai.OpenAI(base_url=first.url + "/v1", api_key=first.create_key("acme"))
    training = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_rows(4)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    wait_for(lambda: endpoint.answered(503), timeout=60)
    first.kill()  # SIGKILL: server, workers and the webhook thread
    endpoint.then = 200

    start_server(data_dir=first.data_dir, env=webhook_env(endpoint, secret))
    wait_for(lambda: endpoint.answered(200), timeout=60)
    (delivered,) = endpoint.answered(200)
    assert unwrap(secret, delivered).data.id == job.id
    # The same delivery as the attempts before the kill, continued rather than recorded again.
    assert {request["headers"]["webhook-id"] for request in endpoint.received} == {delivered["headers"]["webhook-id"]}
