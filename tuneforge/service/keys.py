"""API keys: `tuneforge keys create --org NAME` prints a key once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.errors import UserError
from tuneforge.service.store import ApiKey, Org, new_id

ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, org_name: str) -> str:
    """Make (or reuse) the org and a new key for it; returns the plaintext key, which is never stored."""
    if not ORG_NAME.match(org_name):
        raise UserError(f"org name {org_name!r} must be 1-40 lowercase letters, digits, '-' or '_'")
    org = session.scalar(select(Org).where(Org.name == org_name))
    if org is None:
        org = Org(id=new_id("org"), name=org_name)
        session.add(org)
        session.flush()
    key = "tf-" + secrets.token_urlsafe(32)
    session.add(ApiKey(key_hash=hash_key(key), org_id=org.id, prefix=key[:8]))
    session.commit()
    return key


def org_for_key(session: Session, key: str) -> Org | None:
    api_key = session.get(ApiKey, hash_key(key))
    return session.get(Org, api_key.org_id) if api_key else None
