"""Request dependencies: the database session and the caller's org (from `Authorization: Bearer KEY`).

A request's session may take a pooled connection only once the request holds a permit of the app's
ConnectionGate, which it waits for on the event loop (issue 19). FastAPI runs each sync dependency and each
sync route in a worker thread of its own, so a session's connection, taken in get_org, stays checked out
across several hops to anyio's 40 worker threads. When more requests were in flight than the pool had
connections, the threads all sat waiting for a connection while the requests holding the connections
waited for a thread, until the pool timed out and every waiter got a 500. A request waiting for a permit
holds neither a thread nor a connection; a request holding one has a connection to take, so the threads it
waits for are busy with work that finishes.

Why a gate rather than the alternatives: making the I/O-free dependencies async (get_settings is) saves
hops but cannot remove them, since get_org does I/O and the sync route runs in another thread after it; and a
larger thread pool only moves the limit, to as many requests as there are threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from tuneforge.service.keys import authenticate
from tuneforge.service.settings import Settings
from tuneforge.service.store import Org

# Not gated: work that takes its connection inside one worker thread and gives it back before leaving that
# thread (guard.py's admission of every /v1 request, the chat route's lookups in routes/chat.py). It never
# holds a connection while waiting for a thread, so whoever waits for its connection waits only for work in
# progress.


class ConnectionGate:
    """Permits to take a pooled connection (app.state.connection_gate): one per connection of the API
    process's pool (settings database_pool_size + database_max_overflow), waited for
    at most database_pool_timeout_seconds, as the pool itself would wait. None to wait for when the pool has
    no limit (SQLAlchemy's pool_size 0 or max_overflow -1)."""

    def __init__(self, settings: Settings):
        unlimited = settings.database_pool_size <= 0 or settings.database_max_overflow < 0
        connections = settings.database_pool_size + settings.database_max_overflow
        self.permits = None if unlimited else max(1, connections)
        self.timeout = settings.database_pool_timeout_seconds
        self._semaphore = None if self.permits is None else asyncio.Semaphore(self.permits)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if self._semaphore is None:
            yield
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            # What the pool raised when it ran out (a 500): the settings to raise are the pool's.
            raise PoolTimeout(
                f"no database connection came free within {self.timeout:g}s: {self.permits} requests hold them "
                "(TUNEFORGE_DATABASE_POOL_SIZE, _MAX_OVERFLOW, _POOL_TIMEOUT_SECONDS)"
            ) from None
        try:
            yield
        finally:
            self._semaphore.release()


async def get_session(request: Request) -> AsyncIterator[Session]:
    async with request.app.state.connection_gate.held():
        session = request.app.state.sessionmaker()
        try:
            yield session
        finally:
            await run_in_threadpool(session.close)  # gives the connection back: I/O, kept off the event loop


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # async: no worker thread for what needs no I/O


def request_org(session: Session, request: Request) -> Org:
    """The caller's org. guard.py authenticated the request before its body was read and left the org's id
    in the scope; without it the key is checked here."""
    org_id = request.scope.get("state", {}).get("org_id")
    org = session.get(Org, org_id) if org_id else None
    return org if org is not None else authenticate(session, request.headers.get("authorization", ""))


# scope="function": the session closes, and its permit goes back, once the route's answer is made, not after
# it has been sent (a file download to a slow client holds neither).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_org(request: Request, session: SessionDep) -> Org:
    return request_org(session, request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
OrgDep = Annotated[Org, Depends(get_org)]


def page(items: list[dict], has_more: bool) -> dict:
    """OpenAI's cursor page: pass the last id as `after` to get the next page."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
