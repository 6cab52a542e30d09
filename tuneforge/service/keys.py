"""API keys: `tuneforge keys create --org NAME [--name N]` prints a key once; only its SHA-256 is stored.
`keys list` shows each key's id (`key-` and the first 12 hex digits of its hash: enough to name it, useless
to sign in), org, name, prefix, creation and last use; `keys revoke ID` ends a key; `keys rotate ID` makes its
successor (same org and name) and revokes it. guard.py authenticates every /v1 request with `authenticate`."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.errors import UserError
from tuneforge.service.api_error import APIError
from tuneforge.service.store import ApiKey, Org, new_id, now

ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$")
# A key's last use is written at most this often: a write on every request would serialise SQLite.
LAST_USED_RESOLUTION = 60


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(api_key: ApiKey) -> str:
    return "key-" + api_key.key_hash[:12]


def create_key(session: Session, org_name: str, name: str | None = None) -> str:
    """Make (or reuse) the org and a new key for it; returns the plaintext key, which is never stored."""
    if not ORG_NAME.match(org_name):
        raise UserError(f"org name {org_name!r} must be 1-40 lowercase letters, digits, '-' or '_'")
    if name is not None and not KEY_NAME.match(name):
        raise UserError(f"key name {name!r} must be 1-64 letters, digits, spaces or '_.@-'")
    org = session.scalar(select(Org).where(Org.name == org_name))
    if org is None:
        org = Org(id=new_id("org"), name=org_name)
        session.add(org)
        session.flush()
    key = "tf-" + secrets.token_urlsafe(32)
    session.add(ApiKey(key_hash=hash_key(key), org_id=org.id, prefix=key[:8], name=name, created_at=now()))
    session.commit()
    return key


def list_keys(session: Session, org_name: str | None = None) -> list[dict]:
    """Every key (or one org's), oldest first: id, org, name, prefix, created_at, last_used_at, revoked_at."""
    query = select(ApiKey, Org.name).join(Org, Org.id == ApiKey.org_id).order_by(ApiKey.created_at, ApiKey.key_hash)
    if org_name is not None:
        query = query.where(Org.name == org_name)
    return [
        {
            "id": key_id(api_key),
            "org": org,
            "name": api_key.name,
            "prefix": api_key.prefix,
            "created_at": api_key.created_at,
            "last_used_at": api_key.last_used_at,
            "revoked_at": api_key.revoked_at,
        }
        for api_key, org in session.execute(query).all()
    ]


def _find(session: Session, ident: str) -> ApiKey:
    """The key a `keys list` id names (or its whole hash); exactly one, or a UserError saying why not."""
    digest = ident.removeprefix("key-").lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise UserError(f"{ident!r} is not a key id: use the id `tuneforge keys list` shows (key-...)")
    matches = session.scalars(select(ApiKey).where(ApiKey.key_hash.startswith(digest))).all()
    if not matches:
        raise UserError(f"no key {ident!r} (see `tuneforge keys list`)")
    if len(matches) > 1:
        raise UserError(f"{ident!r} names {len(matches)} keys: give more of the id")
    return matches[0]


def revoke_key(session: Session, ident: str) -> dict:
    """Revoke a key at once (its next request answers 401); revoking twice is not an error."""
    api_key = _find(session, ident)
    if api_key.revoked_at is None:
        api_key.revoked_at = now()
        session.commit()
    return {"id": key_id(api_key), "revoked_at": api_key.revoked_at}


def rotate_key(session: Session, ident: str) -> tuple[str, str]:
    """A new key for the same org and name, and the old one revoked, in one transaction: (new key, its id)."""
    old = _find(session, ident)
    if old.revoked_at is not None:
        raise UserError(f"key {key_id(old)} is revoked; create a new one with `tuneforge keys create`")
    key = "tf-" + secrets.token_urlsafe(32)
    fresh = ApiKey(key_hash=hash_key(key), org_id=old.org_id, prefix=key[:8], name=old.name, created_at=now())
    session.add(fresh)
    old.revoked_at = now()
    session.commit()
    return key, key_id(fresh)


def org_for_key(session: Session, key: str) -> Org | None:
    """The org of a live key (None for an unknown or revoked one); records the key's use."""
    api_key = session.get(ApiKey, hash_key(key))
    if api_key is None or api_key.revoked_at is not None:
        return None
    current = now()
    if api_key.last_used_at is None or api_key.last_used_at < current - LAST_USED_RESOLUTION:
        api_key.last_used_at = current
        session.commit()
    return session.get(Org, api_key.org_id)


def authenticate(session: Session, authorization: str) -> Org:
    """The org an `Authorization: Bearer KEY` header belongs to, or a 401 in OpenAI's words."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
            "(create one with `tuneforge keys create --org NAME`).",
            code="missing_api_key",
        )
    org = org_for_key(session, key) if len(key) <= 256 and key.isascii() and key.isprintable() else None
    if org is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return org
