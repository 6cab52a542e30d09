"""Storage for the service: SQLAlchemy tables and the few queries that need care (claiming jobs, leases, the
guarded update a worker makes to a job it holds).

SQLite under the data dir for one box; PostgreSQL for many workers on many machines. A worker claims a
job with SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL) followed by a conditional UPDATE, so on either
database exactly one worker wins a job. A claimed job carries a lease that the worker's heartbeat
extends; a job whose lease ran out (its worker died) is claimed again by the next worker.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
CLAIMABLE_STATUSES = ("validating_files", "queued")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # What happens to a fine-tune that fails the forgetting gate: "block" (the job fails, no model is
    # published) or "publish" (the job succeeds and says plainly that the gate failed).
    forgetting_policy: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # `tuneforge keys list | revoke | rotate` (keys.py); nullable, so add_missing_columns upgrades old databases.
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class StoredFile(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("org_id", "idempotency_key"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(16), default="supervised")
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True, default="validating_files")
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The name the model will have (ft:{base}:{org}:{suffix}:{id}); published as fine_tuned_model on success.
    ft_name: Mapped[str] = mapped_column(String(512))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    model_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    report_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # tuneforge's own: the create body's `tuneforge` options, where the base came from, the run's estimate
    # and the evaluation after training (eval, forgetting, verdict).
    options: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    grader: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # method reinforcement's
    lineage: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    integrations: Mapped[list | None] = mapped_column(JSON, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    evaluation: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


class WebhookEvent(Base):
    """A job's final state to announce (webhooks.py), written in the transaction that made the state final."""

    __tablename__ = "webhook_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes every delivery sends and signs
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # True once a deliverer has made its WebhookDelivery rows (one per URL configured then).
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class WebhookDelivery(Base):
    """One event to one URL: pending until a 2xx reply (delivered) or the last attempt (failed)."""

    __tablename__ = "webhook_deliveries"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # webhook-id: the same on every retry
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits out the other process's lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0) -> Engine:
    """The engine for `url`, its tables made; the pool arguments are SQLAlchemy's (its defaults here), which the
    API process takes from its settings."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, **pool)
    # create_all makes missing tables and never alters existing ones: a database from an older version keeps
    # the columns this model no longer declares (jobs.requested); they are nullable and never named, so harmless.
    Base.metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the nullable columns a database written by an older version lacks (create_all never alters a
    table), so an upgraded server opens the old database instead of failing on its first SELECT. Returns
    "table.column" for each column added."""
    from sqlalchemy import inspect, text

    added = []
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"the database's {table.name} table lacks the required column {column.name}")
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            except Exception:
                # The API and the workers start together: another process may have added it first.
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue
            added.append(f"{table.name}.{column.name}")
    return added


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
) -> JobEvent:
    event_row = JobEvent(
        id=new_id("ftevent"), job_id=job_id, message=message, level=level, type=type, data=data, created_at=now()
    )
    session.add(event_row)
    return event_row


def claim_job(session: Session, worker_id: str, lease_seconds: float) -> Job | None:
    """Take the oldest job no live worker holds; None when there is none. Commits."""
    current = time.time()
    claimable = or_(
        (Job.status.in_(CLAIMABLE_STATUSES)) & (or_(Job.lease_owner.is_(None), Job.lease_expires_at < current)),
        # A running job whose lease ran out lost its worker: run it again.
        (Job.status == "running") & (Job.lease_expires_at < current),
    )
    candidates = session.scalars(
        select(Job.id).where(claimable).order_by(Job.seq).limit(4).with_for_update(skip_locked=True)
    ).all()
    for job_id in candidates:
        # The conditional UPDATE is the real arbiter: on SQLite FOR UPDATE is a no-op, and the row may have
        # changed hands between our SELECT and now.
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, claimable)
            .values(lease_owner=worker_id, lease_expires_at=current + lease_seconds, attempts=Job.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            session.commit()
            return session.get(Job, session.scalar(select(Job.seq).where(Job.id == job_id)), populate_existing=True)
    session.commit()
    return None


def update_held_job(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    statuses: tuple[str, ...] | None = None,
    release_lease: bool = False,
    **values,
) -> bool:
    """Set `values` on a job only while `worker_id` holds its lease (and, given `statuses`, only while the
    job is in one of them); True when it did. `release_lease` also gives the lease up. Does not commit: the
    caller commits the change together with the events that describe it.

    The conditional UPDATE is the arbiter, as in claim_job: since this worker last read the job, the user
    may have cancelled or paused it, or another worker may have taken it over after our lease ran out."""
    guard = [Job.id == job_id, Job.lease_owner == worker_id]
    if statuses is not None:
        guard.append(Job.status.in_(statuses))
    if release_lease:
        values.update(lease_owner=None, lease_expires_at=None)
    result = session.execute(update(Job).where(*guard).values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def transition_job(session: Session, *, job_id: str, statuses: tuple[str, ...], **values) -> bool:
    """A user's change of a job's status (cancel, pause, resume): set `values` only while the job is still in
    one of `statuses`; True when it was. Does not commit. The conditional UPDATE is the arbiter, as in
    update_held_job: the worker may have finished the job since the route read it, and a finished job must
    not turn into a cancelled one (nor send two webhooks)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(statuses)).values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def renew_lease(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> Job | None:
    """Extend our lease; None when the job is no longer ours (another worker took it over). Commits."""
    held = update_held_job(session, job_id=job_id, worker_id=worker_id, lease_expires_at=time.time() + lease_seconds)
    session.commit()
    if not held:
        return None
    return session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()
