"""Request dependencies: the database session and the caller's org (from `Authorization: Bearer KEY`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tuneforge.service.keys import authenticate
from tuneforge.service.settings import Settings
from tuneforge.service.store import Org


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def request_org(session: Session, request: Request) -> Org:
    """The caller's org. guard.py authenticated the request before its body was read and left the org's id
    in the scope; without it the key is checked here."""
    org_id = request.scope.get("state", {}).get("org_id")
    org = session.get(Org, org_id) if org_id else None
    return org if org is not None else authenticate(session, request.headers.get("authorization", ""))


def get_org(request: Request, session: Annotated[Session, Depends(get_session)]) -> Org:
    return request_org(session, request)


SessionDep = Annotated[Session, Depends(get_session)]
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
