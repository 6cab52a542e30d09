"""/v1/files: upload (.jsonl, purpose fine-tune), list, retrieve, delete, content.

The bytes are kept by tuneforge/service/file_storage.py (under DATA_DIR/files by generated id).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from tuneforge.service.deps import OrgDep, SessionDep, SettingsDep, page
from tuneforge.service.errors import APIError, not_found
from tuneforge.service.file_storage import FileTooLarge, file_path, find_file, remove_file_content, save_file
from tuneforge.service.limits import RateLimited, check_file_quota
from tuneforge.service.schemas import file_public
from tuneforge.service.store import StoredFile, now
from tuneforge.service.text_checks import clean_filename

router = APIRouter(prefix="/v1/files")
RETRY_WINDOW_SECONDS = 600


def get_file(session, org_id: str, file_id: str) -> StoredFile:
    stored = find_file(session, org_id=org_id, file_id=file_id)
    if stored is None:
        raise not_found("file", file_id)
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
    filename = clean_filename(file.filename or "")
    if not filename.lower().endswith(".jsonl"):
        raise APIError(
            400,
            f"Invalid file format for fine-tuning: {filename or 'file'!r} must be a .jsonl file.",
            code="invalid_file_format",
            param="file",
        )
    try:
        stored = save_file(session, settings, org_id=org.id, source=file.file, filename=filename[:512], purpose=purpose)
    except FileTooLarge as exc:
        raise APIError(413, str(exc), code="file_too_large", param="file") from exc
    try:
        check_file_quota(session, settings, org.id, stored=True)
    except RateLimited:
        session.delete(stored)
        session.commit()
        remove_file_content(settings, stored.id)
        raise
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
            remove_file_content(settings, stored.id)
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
    remove_file_content(settings, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
def file_content(file_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep) -> FileResponse:
    stored = get_file(session, org.id, file_id)
    path = file_path(settings, file_id)
    if not path.exists():
        raise not_found("file", file_id)
    media_type = "text/csv" if stored.filename.endswith(".csv") else "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=stored.filename)
