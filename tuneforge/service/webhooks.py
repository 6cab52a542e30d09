"""tuneforge serve --webhook-url URL --webhook-secret whsec_...: `fine_tuning.job.succeeded|failed|cancelled`
POSTed to the operator's URLs, signed the way OpenAI signs its webhooks, retried until they are taken.

Signing follows Standard Webhooks, as OpenAI does: headers `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the key being the base64 after
`whsec_` (so the openai SDK's `client.webhooks.unwrap(body, headers)` accepts them). The body is OpenAI's
event: {"id": "evt_...", "object": "event", "created_at", "type", "data": {"id": job id}}.

An outbox in the database, so no final state goes unannounced and no process's death loses a delivery:
- whoever makes a job final (the worker's `_finish`, the cancel route) calls `record_job_event` in the
  transaction that changes the status: the event commits with the state or not at all;
- `tuneforge serve` runs a `Deliverer` thread. It fans each new event out into one WebhookDelivery per
  configured URL, then sends the due deliveries, each claimed with a lease by a conditional UPDATE (as
  store.claim_job claims jobs), so two servers on one database never send one delivery twice at once. A
  reply other than 2xx, or none, is retried with exponential back-off until `webhook_max_attempts`.
  A server killed mid-delivery leaves the row leased; the lease runs out and the next server sends it
  (at least once: receivers dedupe on `webhook-id`, which stays the same across retries).

Why a thread of the API server and not the workers: the server is the process the operator configures and
always runs, while workers may run on other machines without the webhook settings; delivery is a handful
of HTTP requests, idle nearly always. Events recorded while no URL was configured are dropped at fan-out,
not replayed when a URL appears later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tuneforge import __version__
from tuneforge.service.settings import Settings
from tuneforge.service.store import Job, WebhookDelivery, WebhookEvent, make_engine, make_sessionmaker, now

JOB_EVENT_TYPES = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
SECRET_PREFIX = "whsec_"
MAX_BACKOFF_SECONDS = 3600.0
REQUEST_TIMEOUT_SECONDS = 10.0
# A claimed delivery's lease covers one request and its bookkeeping; past it another server may send it.
LEASE_MARGIN_SECONDS = 30.0


# --- signing ----------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh secret in OpenAI's format: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for: the bytes under `whsec_`'s base64, else the text itself (the SDK's
    rule). Raises ValueError for a `whsec_` secret whose base64 is broken or empty."""
    if not secret.startswith(SECRET_PREFIX):
        key = secret.encode()
    else:
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError(f"webhook secret: the part after {SECRET_PREFIX} is not valid base64") from None
    if not key:
        raise ValueError("webhook secret: empty")
    return key


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(key: bytes, webhook_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    # Signed at send time: receivers refuse timestamps more than a few minutes old, and retries come later.
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": f"tuneforge/{__version__} webhooks",
    }


# --- recording (in the caller's transaction) ----------------------------------------------------------------


def record_job_event(session: Session, job: Job, status: str) -> WebhookEvent | None:
    """Add the webhook event for `job` reaching final `status` to the session (not committed: commit it with
    the status change). None for a status that has no event."""
    event_type = JOB_EVENT_TYPES.get(status)
    if event_type is None:
        return None
    event_id = "evt_" + secrets.token_hex(16)
    created_at = now()
    body = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": {"id": job.id}}
    event = WebhookEvent(
        id=event_id,
        org_id=job.org_id,
        job_id=job.id,
        type=event_type,
        body=json.dumps(body, separators=(",", ":")),
        created_at=created_at,
        fanned_out=False,
    )
    session.add(event)
    return event


def backoff_seconds(failed_attempts: int, first: float) -> float:
    """Wait after the n-th failed attempt: first, 2 first, 4 first, ... capped at an hour."""
    return min(first * 2 ** (failed_attempts - 1), MAX_BACKOFF_SECONDS)


# --- delivering -----------------------------------------------------------------------------------------------


class Deliverer:
    """Fans events out to the configured URLs and sends due deliveries; `run` loops until `stop()`."""

    def __init__(self, settings: Settings, *, deliverer_id: str | None = None, client: httpx.Client | None = None):
        self.settings = settings
        self.urls = list(settings.webhook_urls)
        self.key = secret_key(settings.webhook_secret) if settings.webhook_secret else None
        bad = [url for url in self.urls if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"webhook URL {bad[0]!r}: expected http://... or https://...")
        if self.urls and self.key is None:
            raise ValueError("webhook URLs need a secret to sign with (--webhook-secret / TUNEFORGE_WEBHOOK_SECRET)")
        self.deliverer_id = deliverer_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.sessions = make_sessionmaker(make_engine(settings.url))
        self.client = client or httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, follow_redirects=False)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def fan_out(self) -> int:
        """One pending delivery per URL for each event not yet fanned out; returns how many events it took."""
        taken = 0
        with self.sessions() as session:
            ids = session.scalars(
                select(WebhookEvent.id)
                .where(WebhookEvent.fanned_out.is_(False))
                .order_by(WebhookEvent.seq)
                .limit(50)
                .with_for_update(skip_locked=True)
            ).all()
            for event_id in ids:
                # The conditional UPDATE decides which server fans an event out (FOR UPDATE is a no-op on SQLite).
                result = session.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.id == event_id, WebhookEvent.fanned_out.is_(False))
                    .values(fanned_out=True)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:
                    continue
                taken += 1
                current = time.time()
                for url in self.urls:
                    session.add(
                        WebhookDelivery(
                            id="wh_" + secrets.token_hex(16),
                            event_id=event_id,
                            url=url,
                            status="pending",
                            attempts=0,
                            next_attempt_at=current,
                            created_at=now(),
                        )
                    )
            session.commit()
        return taken

    def _claim(self) -> tuple[WebhookDelivery, str] | None:
        """Lease the oldest due delivery and return it with its event's body; None when nothing is due."""
        current = time.time()
        due = (
            (WebhookDelivery.status == "pending")
            & (WebhookDelivery.next_attempt_at <= current)
            & or_(WebhookDelivery.lease_owner.is_(None), WebhookDelivery.lease_expires_at < current)
        )
        with self.sessions() as session:
            ids = session.scalars(
                select(WebhookDelivery.id)
                .where(due)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.seq)
                .limit(4)
                .with_for_update(skip_locked=True)
            ).all()
            for delivery_id in ids:
                lease_until = current + REQUEST_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS
                result = session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id, due)
                    .values(lease_owner=self.deliverer_id, lease_expires_at=lease_until)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:
                    session.commit()
                    delivery = session.scalar(
                        select(WebhookDelivery)
                        .where(WebhookDelivery.id == delivery_id)
                        .execution_options(populate_existing=True)
                    )
                    body = session.scalar(select(WebhookEvent.body).where(WebhookEvent.id == delivery.event_id))
                    return delivery, body
            session.commit()
        return None

    def _send(self, delivery: WebhookDelivery, body: str) -> tuple[int | None, str | None]:
        """POST one delivery: (HTTP status, None) when it got a reply, (None, why) when it did not."""
        payload = body.encode()
        try:
            response = self.client.post(
                delivery.url, content=payload, headers=signed_headers(self.key, delivery.id, payload)
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        return response.status_code, None

    def _record(self, delivery: WebhookDelivery, status_code: int | None, error: str | None) -> None:
        attempts = delivery.attempts + 1
        values: dict = {"attempts": attempts, "last_status": status_code, "lease_owner": None, "lease_expires_at": None}
        if status_code is not None and 200 <= status_code < 300:
            values.update(status="delivered", delivered_at=now(), last_error=None)
        else:
            values["last_error"] = error or f"HTTP {status_code}"
            if attempts >= self.settings.webhook_max_attempts:
                values["status"] = "failed"
            else:
                values["next_attempt_at"] = time.time() + backoff_seconds(attempts, self.settings.webhook_retry_seconds)
        with self.sessions() as session:
            # Only while we still hold it: past our lease another server may have sent and recorded it.
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == self.deliverer_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            session.commit()

    def run_once(self, max_deliveries: int = 100) -> int:
        """Fan out new events, then send what is due (at most max_deliveries); returns how many were sent."""
        self.fan_out()
        sent = 0
        while sent < max_deliveries and not self.stopping.is_set():
            claimed = self._claim()
            if claimed is None:
                break
            delivery, body = claimed
            self._record(delivery, *self._send(delivery, body))
            sent += 1
        return sent

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database hiccup must not end webhook delivery for the server's life
                print(f"tuneforge webhooks: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.stopping.wait(self.settings.poll_seconds)

    def start(self) -> Deliverer:
        self.thread = threading.Thread(target=self.run, name="tuneforge-webhooks", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = REQUEST_TIMEOUT_SECONDS + 5) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.client.close()
