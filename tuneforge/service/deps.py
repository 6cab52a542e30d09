"""Request dependencies: the database session and the caller's org (from `Authorization: Bearer KEY`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tuneforge.service.errors import APIError
from tuneforge.service.keys import org_for_key
from tuneforge.service.settings import Settings
from tuneforge.service.store import Org


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_org(request: Request, session: Annotated[Session, Depends(get_session)]) -> Org:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
            "(create one with `tuneforge keys create --org NAME`).",
            code="missing_api_key",
        )
    org = org_for_key(session, key.strip())
    if org is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return org


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
