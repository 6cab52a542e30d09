"""The store's guarded job update, and databases written by older versions, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from test_flow import fresh_database

from tuneforge.service.settings import Settings
from tuneforge.service.store import (
    Job,
    Org,
    add_missing_columns,
    claim_job,
    make_engine,
    make_sessionmaker,
    renew_lease,
    transition_job,
    update_held_job,
)

pytestmark = pytest.mark.service


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path).url
    name = request.node.originalname.removeprefix("test_")[:60]
    return Settings(database_url=fresh_database(request.getfixturevalue("postgres_url"), name)).url


def add_job(session, job_id: str = "ftjob-1") -> Job:
    if session.get(Org, "org-1") is None:
        session.add(Org(id="org-1", name="acme"))
        session.flush()  # no relationship tells the unit of work to insert the org first
    job = Job(id=job_id, org_id="org-1", model="m", training_file="file-1", seed=0, ft_name=f"ft:m:acme::{job_id}")
    session.add(job)
    session.commit()
    return job


def test_update_held_job_lands_only_while_the_worker_holds_the_job_in_an_allowed_status(database_url):
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        add_job(session)
        job = claim_job(session, "worker-a", lease_seconds=30)
        assert job.lease_owner == "worker-a"

        assert not update_held_job(session, job_id=job.id, worker_id="worker-b", status="running")
        assert not update_held_job(session, job_id=job.id, worker_id="worker-a", statuses=("queued",), status="running")
        assert update_held_job(
            session, job_id=job.id, worker_id="worker-a", statuses=("validating_files",), status="queued"
        )
        session.commit()
        assert renew_lease(session, job.id, "worker-b", 30) is None
        assert renew_lease(session, job.id, "worker-a", 30).status == "queued"

        assert update_held_job(session, job_id=job.id, worker_id="worker-a", release_lease=True, trained_tokens=5)
        session.commit()
        job = session.scalars(select(Job).where(Job.id == job.id).execution_options(populate_existing=True)).one()
        assert (job.lease_owner, job.lease_expires_at, job.trained_tokens) == (None, None, 5)
        # Released: the old holder's writes no longer land.
        assert not update_held_job(session, job_id=job.id, worker_id="worker-a", status="running")
    engine.dispose()


def test_a_database_that_still_has_the_removed_jobs_requested_column_works(database_url):
    """Older versions declared jobs.requested (never used). create_all does not drop it, so a database they
    wrote keeps it; the store must read, insert and update jobs there as if it were not there."""
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        add_job(session, "ftjob-old")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs ADD COLUMN requested VARCHAR(16)"))
        connection.execute(text("UPDATE jobs SET requested = 'cancel'"))
    engine.dispose()

    engine = make_engine(database_url)  # what a newer server does at start
    with make_sessionmaker(engine)() as session:
        add_job(session, "ftjob-new")
        claimed = [claim_job(session, "worker-a", lease_seconds=30).id for _ in range(2)]
        assert claimed == ["ftjob-old", "ftjob-new"]
        for job_id in claimed:
            assert update_held_job(session, job_id=job_id, worker_id="worker-a", release_lease=True, status="failed")
        session.commit()
        rows = session.execute(text("SELECT id, status, requested FROM jobs ORDER BY seq")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("ftjob-old", "failed", "cancel"), ("ftjob-new", "failed", None)]


def test_a_users_status_change_never_overwrites_a_job_the_worker_finished(database_url):
    """The cancel route read the job as running; the worker then finished it. The cancel must not land."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as route, sessions() as worker:
        add_job(route)
        seen_by_route = route.scalar(select(Job).where(Job.id == "ftjob-1"))
        assert seen_by_route.status == "validating_files"
        worker.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = 'ftjob-1'"))
        worker.commit()
        active = ("validating_files", "queued", "running", "paused")
        assert not transition_job(route, job_id="ftjob-1", statuses=active, status="cancelled")
        route.commit()
        assert route.scalar(text("SELECT status FROM jobs WHERE id = 'ftjob-1'")) == "succeeded"
        assert transition_job(route, job_id="ftjob-1", statuses=("succeeded",), status="failed")
        route.commit()
        assert worker.scalar(text("SELECT status FROM jobs WHERE id = 'ftjob-1'")) == "failed"
    engine.dispose()


def test_a_database_of_an_older_version_gains_the_new_nullable_columns(database_url):
    """create_all never alters a table: make_engine adds the columns a newer version declares (job options,
    lineage, evaluation, ...) to a database written before them, on both databases."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs DROP COLUMN evaluation"))
        connection.execute(text("ALTER TABLE orgs DROP COLUMN forgetting_policy"))
    engine.dispose()
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        job = add_job(session)
        assert session.get(Org, "org-1").forgetting_policy is None and job.evaluation is None
    assert add_missing_columns(engine) == []  # nothing left to add
    engine.dispose()
