"""What one organisation may take from a shared server: requests and chat tokens per minute (rate limits,
kept in this process's memory) and stored bytes, files and active jobs (quotas, counted in the database).
Past any of them: 429 with `retry-after` (docs/service.md, "Limits"). Settings: tuneforge/service/settings.py.

Rate limits are token buckets: an organisation may burst up to a minute's allowance, then gets it back at
allowance/60 per second. Each API process keeps its own buckets, so N servers behind a balancer allow N times
the rate; quotas live in the database and hold across servers.
"""

from __future__ import annotations

import math
import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneforge.service.api_error import APIError
from tuneforge.service.store import Job, StoredFile

ACTIVE_STATUSES = ("validating_files", "queued", "running")


class RateLimited(APIError):
    """A 429 that says when to come back (errors.py turns it into the envelope with `retry-after`)."""

    def __init__(self, message: str, retry_after: float, *, code: str, retry: bool = True):
        super().__init__(429, message, code=code)
        self.retry_after = max(1, math.ceil(retry_after))
        self.retry = retry  # False for a quota: only the org freeing something helps, so the SDK must not retry


class TokenBuckets:
    """One bucket per organisation holding up to `per_minute` tokens, refilled at per_minute/60 a second."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # org -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, org_id: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; 0 when they were there, else the seconds until they will be (nothing taken).
        A cost above the allowance is charged as the whole allowance, so a big request waits, never starves."""
        if self.per_minute <= 0:
            return 0.0
        cost = min(cost, self.per_minute)
        rate = self.per_minute / 60.0
        current = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(org_id, (float(self.per_minute), current))
            tokens = min(float(self.per_minute), tokens + (current - when) * rate)
            if tokens >= cost:
                self._buckets[org_id] = (tokens - cost, current)
                return 0.0
            self._buckets[org_id] = (tokens, current)
            return (cost - tokens) / rate


class Limits:
    """The rate-limit state of one API process (app.state.limits)."""

    def __init__(self, settings):
        self.requests = TokenBuckets(settings.requests_per_minute)
        self.chat_tokens = TokenBuckets(settings.chat_tokens_per_minute)

    def check_request(self, org_id: str) -> None:
        wait = self.requests.take(org_id)
        if wait:
            raise RateLimited(
                f"Rate limit reached: {self.requests.per_minute} requests per minute for your organization. "
                f"Try again in {math.ceil(wait)} s.",
                wait,
                code="rate_limit_exceeded",
            )


def estimated_chat_tokens(body) -> int:
    """What a chat request may cost before it runs: its text at about 4 characters a token, plus the tokens
    it may generate."""
    characters = sum(len(message.text()) for message in body.messages)
    return characters // 4 + 1 + (body.max_completion_tokens or body.max_tokens or 256)


def check_chat_tokens(request, org_id: str, body) -> None:
    """The chat route's rate limit on tokens per minute (429 with retry-after when the org has used them)."""
    buckets: TokenBuckets = request.app.state.limits.chat_tokens
    wait = buckets.take(org_id, estimated_chat_tokens(body))
    if wait:
        raise RateLimited(
            f"Rate limit reached: {buckets.per_minute} chat tokens per minute for your organization "
            f"(prompt and max_tokens count). Try again in {math.ceil(wait)} s.",
            wait,
            code="rate_limit_exceeded",
        )


def _quota_error(what: str, limit: int, fix: str) -> RateLimited:
    return RateLimited(
        f"Quota exceeded: your organization may keep {limit} {what}. {fix}", 60, code="quota_exceeded", retry=False
    )


def check_file_quota(session: Session, settings, org_id: str, *, stored: bool = False) -> None:
    """The org's files and their bytes within its quota: before an upload (room for one more file) and after
    it is `stored` (its bytes counted; the caller removes it on a 429)."""
    count, total = session.execute(
        select(func.count(StoredFile.seq), func.coalesce(func.sum(StoredFile.bytes), 0)).where(
            StoredFile.org_id == org_id, StoredFile.deleted.is_(False)
        )
    ).one()
    fix = "Delete files you no longer need (DELETE /v1/files/ID)."
    if settings.quota_files and not stored and count >= settings.quota_files:
        raise _quota_error("files", settings.quota_files, fix)
    if settings.quota_bytes and (total > settings.quota_bytes or (not stored and total >= settings.quota_bytes)):
        raise _quota_error("bytes of files", settings.quota_bytes, fix)


def check_job_quota(session: Session, settings, org_id: str) -> None:
    """Before a job is created: the org's validating, queued and running jobs within its quota."""
    if not settings.quota_active_jobs:
        return
    active = session.scalar(
        select(func.count(Job.seq)).where(Job.org_id == org_id, Job.status.in_(ACTIVE_STATUSES))
    )
    if active >= settings.quota_active_jobs:
        raise _quota_error(
            "queued or running jobs at once", settings.quota_active_jobs,
            "Wait for one to finish, or cancel one (POST /v1/fine_tuning/jobs/ID/cancel).",
        )
