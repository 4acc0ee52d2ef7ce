"""Jobs in the caller's transaction (outbox) and exactly-once effects (ledger), on PostgreSQL and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

import esf
from esf.foundation import Foundation

from . import apps
from .harness import Worker, settings_env


@pytest.fixture
def setup(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Foundation, sa.Engine, str]]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url, queues=(queue,), data_dir=str(tmp_path), extra={"ESF_DATABASE_URL": pg_url})
    fnd = apps.build(esf.Settings.from_env(env))
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id TEXT PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE charges (order_id TEXT NOT NULL)"))
    fnd.events.head()  # migrations
    worker = Worker(env, tmp_path / "w.log")
    try:
        worker.wait_ready()
        yield fnd, engine, queue
    finally:
        worker.stop()
        fnd.close()
        engine.dispose()


def test_a_job_enqueued_in_a_transaction_is_sent_only_after_commit(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    fnd, engine, queue = setup
    broker = redis.Redis.from_url(redis_url)
    # Given an open transaction that writes an order and enqueues a job
    with Session(engine) as s:
        s.execute(sa.text("INSERT INTO orders(id) VALUES ('o-1')"))
        handle = fnd.jobs.get("t.add").enqueue(1, 2, session=s)
        # Then nothing is on the broker before the commit
        assert broker.llen(queue) == 0
        s.commit()
    # And after the commit the job runs
    assert handle.wait(60) == 3


def test_nothing_is_sent_for_a_rolled_back_transaction(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    fnd, engine, queue = setup
    with Session(engine) as s:
        s.execute(sa.text("INSERT INTO orders(id) VALUES ('o-2')"))
        handle = fnd.jobs.get("t.add").enqueue(5, 5, session=s)
        s.rollback()
    # The relay runs several times (every second) and finds nothing to send
    time.sleep(3)
    assert fnd.jobs.outbox.drain() == 0
    assert redis.Redis.from_url(redis_url).llen(queue) == 0
    assert fnd.jobs.status(handle.id) == "pending"


def test_a_redelivered_job_skips_the_effect_it_already_committed(setup) -> None:  # type: ignore[no-untyped-def]
    fnd, engine, _ = setup
    job = fnd.jobs.get("t.charge_once")
    # When the same job arrives twice (as a redelivery would)
    first = job.enqueue("o-9").wait(60)
    second = job.enqueue("o-9").wait(60)
    # Then its effect committed once
    assert (first, second) == (True, False)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM charges WHERE order_id = 'o-9'")).scalar_one() == 1
