"""Stored files: uploads (/v1/files) and a job's results, kept under DATA_DIR/files by generated id.

The bytes live on disk under the file's id, never under the uploaded name; the `files` table records who
owns each one and what it is. The API's file routes and the worker (which attaches result files to jobs)
both store and find files here, so the worker never imports an HTTP route.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.service.settings import Settings
from tuneforge.service.store import StoredFile, new_id, now
from tuneforge.service.text_checks import is_identifier

CHUNK = 1024 * 1024


class FileTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"File is too large: the limit is {limit} bytes.")
        self.limit = limit


def file_path(settings: Settings, file_id: str) -> Path:
    return settings.files_dir / file_id


def remove_file_content(settings: Settings, file_id: str) -> None:
    file_path(settings, file_id).unlink(missing_ok=True)


def find_file(session: Session, *, org_id: str, file_id: str) -> StoredFile | None:
    """The org's file with this id, unless it was deleted (or the id could not be one: never sent to SQL)."""
    if not is_identifier(file_id, 64):
        return None
    return session.scalar(
        select(StoredFile).where(StoredFile.id == file_id, StoredFile.org_id == org_id, StoredFile.deleted.is_(False))
    )


def save_file(
    session: Session, settings: Settings, *, org_id: str, source: BinaryIO, filename: str, purpose: str
) -> StoredFile:
    """Copy a file-like object to disk in chunks under a new id (atomic rename), then record it. Commits.
    Raises FileTooLarge past settings.max_upload_bytes, leaving nothing behind."""
    file_id = new_id("file")
    final = file_path(settings, file_id)
    partial = final.with_suffix(".part")
    digest = hashlib.sha256()
    size = 0
    try:
        # 0600 whatever the umask: an upload is its organisation's data, not the machine's other users'.
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise FileTooLarge(settings.max_upload_bytes)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    stored = StoredFile(
        id=file_id,
        org_id=org_id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        sha256=digest.hexdigest(),
        created_at=now(),
    )
    session.add(stored)
    session.commit()
    return stored
