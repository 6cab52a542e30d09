"""/v1/files: upload (.jsonl, purpose fine-tune), list, retrieve, delete, content.

Files are stored under DATA_DIR/files by generated id, never by the uploaded name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep, page
from tuneforge.service.errors import APIError, not_found
from tuneforge.service.schemas import file_public
from tuneforge.service.settings import Settings
from tuneforge.service.store import StoredFile, new_id, now

router = APIRouter(prefix="/v1/files")
CHUNK = 1024 * 1024
RETRY_WINDOW_SECONDS = 600


def file_path(settings: Settings, file_id: str) -> Path:
    return settings.files_dir / file_id


def get_file(session, org_id: str, file_id: str) -> StoredFile:
    stored = session.scalar(
        select(StoredFile).where(StoredFile.id == file_id, StoredFile.org_id == org_id, StoredFile.deleted.is_(False))
    )
    if stored is None:
        raise not_found("file", file_id)
    return stored


def save_file(session, settings: Settings, org_id: str, source, filename: str, purpose: str) -> StoredFile:
    """Copy a file-like object to disk in chunks under a new id (atomic rename), then record it."""
    file_id = new_id("file")
    final = file_path(settings, file_id)
    partial = final.with_suffix(".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise APIError(
                        413,
                        f"File is too large: the limit is {settings.max_upload_bytes} bytes.",
                        code="file_too_large",
                        param="file",
                    )
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


@router.post("")
def upload_file(
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    retry_count: Annotated[int, Header(alias="x-stainless-retry-count")] = 0,
) -> dict:
    if purpose != "fine-tune":
        raise APIError(
            400,
            f"Invalid purpose {purpose!r}: this server accepts 'fine-tune'.",
            code="invalid_purpose",
            param="purpose",
        )
    filename = os.path.basename(file.filename or "")
    if not filename.lower().endswith(".jsonl"):
        raise APIError(
            400,
            f"Invalid file format for fine-tuning: {filename or 'file'!r} must be a .jsonl file.",
            code="invalid_file_format",
            param="file",
        )
    stored = save_file(session, settings, org.id, file.file, filename[:512], purpose)
    if retry_count > 0:
        # The SDK retrying an upload whose answer it missed: keep the copy the first attempt stored.
        earlier = session.scalar(
            select(StoredFile)
            .where(
                StoredFile.org_id == org.id,
                StoredFile.sha256 == stored.sha256,
                StoredFile.filename == filename[:512],
                StoredFile.deleted.is_(False),
                StoredFile.seq < stored.seq,
                StoredFile.created_at >= now() - RETRY_WINDOW_SECONDS,
            )
            .order_by(StoredFile.seq.desc())
            .limit(1)
        )
        if earlier is not None:
            session.delete(stored)
            session.commit()
            file_path(settings, stored.id).unlink(missing_ok=True)
            return file_public(earlier)
    return file_public(stored)


@router.get("")
def list_files(
    org: OrgDep,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict:
    query = select(StoredFile).where(StoredFile.org_id == org.id, StoredFile.deleted.is_(False))
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    if after:
        cursor = get_file(session, org.id, after)
        query = query.where(StoredFile.seq < cursor.seq if order == "desc" else StoredFile.seq > cursor.seq)
    query = query.order_by(StoredFile.seq.desc() if order == "desc" else StoredFile.seq).limit(limit + 1)
    rows = session.scalars(query).all()
    return page([file_public(row) for row in rows[:limit]], len(rows) > limit)


@router.get("/{file_id}")
def retrieve_file(file_id: str, org: OrgDep, session: SessionDep) -> dict:
    return file_public(get_file(session, org.id, file_id))


@router.delete("/{file_id}")
def delete_file(file_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> dict:
    stored = get_file(session, org.id, file_id)
    stored.deleted = True
    session.commit()
    file_path(settings, file_id).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
def file_content(file_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> FileResponse:
    stored = get_file(session, org.id, file_id)
    path = file_path(settings, file_id)
    if not path.exists():
        raise not_found("file", file_id)
    media_type = "text/csv" if stored.filename.endswith(".csv") else "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=stored.filename)
