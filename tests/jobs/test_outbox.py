"""Jobs in the caller's transaction (outbox) and exactly-once effects (ledger), on PostgreSQL and Redis.

The "nothing sent before commit" checks run with no worker consuming the queue,
so the queue's length on the broker is what was sent: nothing can take a message
off it between the send and the assertion.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import outbox_put
from sqlalchemy.orm import Session

import esf
from esf.foundation import Foundation

from . import apps
from .harness import Worker, settings_env, wait_for


@dataclass
class Setup:
    fnd: Foundation
    engine: sa.Engine
    queue: str
    broker: redis.Redis[bytes]
    env: dict[str, str]
    tmp_path: Path

    def worker(self) -> Worker:
        worker = Worker(self.env, self.tmp_path / "w.log")
        worker.wait_ready()
        return worker

    def sent_ids(self) -> list[str]:
        """Ids of the job messages waiting on the broker (no worker consumes them)."""
        return [str(json.loads(raw)["headers"]["id"]) for raw in self.broker.lrange(self.queue, 0, -1)]

    def outbox_rows(self, kind: str) -> int:
        with self.engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM esf_outbox WHERE kind = :k")
            return int(conn.execute(query, {"k": kind}).scalar_one())


@pytest.fixture
def setup(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url, queues=(queue,), data_dir=str(tmp_path), extra={"ESF_DATABASE_URL": pg_url})
    fnd = apps.build(esf.Settings.from_env(env))
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id TEXT PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE charges (order_id TEXT NOT NULL)"))
    fnd.events.head()  # migrations
    broker = redis.Redis.from_url(redis_url)
    try:
        yield Setup(fnd, engine, queue, broker, env, tmp_path)
    finally:
        fnd.close()
        engine.dispose()
        broker.close()


def test_a_job_enqueued_in_a_transaction_is_sent_only_after_commit(setup: Setup) -> None:
    # Given an open transaction that writes an order and enqueues a job (no worker consumes the queue)
    with Session(setup.engine) as s:
        s.execute(sa.text("INSERT INTO orders(id) VALUES ('o-1')"))
        handle = setup.fnd.jobs.get("t.add").enqueue(1, 2, session=s)
        # When this process's relay drains the outbox before the commit
        setup.fnd.jobs.outbox.drain()
        # Then nothing is on the broker: the row is not visible outside the transaction
        assert setup.sent_ids() == []
        s.commit()
    # And after the commit the relay sends it once, with the id enqueue() returned
    wait_for(lambda: setup.sent_ids(), timeout=30, message="the committed job on the broker")
    assert setup.sent_ids() == [handle.id]
    # And a worker started now runs it
    worker = setup.worker()
    try:
        assert handle.wait(60) == 3
    finally:
        worker.stop()


def test_nothing_is_sent_for_a_rolled_back_transaction(setup: Setup) -> None:
    # Given a transaction that enqueues a job and rolls back (no worker consumes the queue)
    with Session(setup.engine) as s:
        s.execute(sa.text("INSERT INTO orders(id) VALUES ('o-2')"))
        rolled_back = setup.fnd.jobs.get("t.add").enqueue(5, 5, session=s)
        s.rollback()
    # When a job is then enqueued and committed in another transaction
    with Session(setup.engine) as s:
        committed = setup.fnd.jobs.get("t.add").enqueue(1, 1, session=s)
        s.commit()
    # Then the relay sends the committed job, and only that one: the rolled-back one left no row to send
    wait_for(lambda: setup.sent_ids(), timeout=30, message="the committed job on the broker")
    wait_for(lambda: setup.outbox_rows("job") == 0, timeout=30, message="the relay's commit")
    assert setup.sent_ids() == [committed.id]
    assert setup.fnd.jobs.status(rolled_back.id) == "pending"


def test_the_jobs_relay_leaves_the_rows_of_other_kinds(setup: Setup) -> None:
    # Given one transaction that enqueues a job and writes an outbox row of another kind
    with Session(setup.engine) as s:
        outbox_put(s, "mail", {"to": "a@example.com"})
        handle = setup.fnd.jobs.get("t.add").enqueue(2, 2, session=s)
        s.commit()
    # When the jobs relay has sent the job and committed its drain
    wait_for(lambda: setup.outbox_rows("job") == 0, timeout=30, message="the jobs relay's commit")
    assert setup.sent_ids() == [handle.id]
    # Then the other kind's row is still in the outbox, for its own relay
    assert setup.outbox_rows("mail") == 1
    assert setup.fnd.jobs.outbox.drain() == 0
    assert setup.outbox_rows("mail") == 1


def test_a_redelivered_job_skips_the_effect_it_already_committed(setup: Setup) -> None:
    job = setup.fnd.jobs.get("t.charge_once")
    worker = setup.worker()
    try:
        # When the same job arrives twice (as a redelivery would)
        first = job.enqueue("o-9").wait(60)
        second = job.enqueue("o-9").wait(60)
    finally:
        worker.stop()
    # Then its effect committed once
    assert (first, second) == (True, False)
    with setup.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM charges WHERE order_id = 'o-9'")).scalar_one() == 1
