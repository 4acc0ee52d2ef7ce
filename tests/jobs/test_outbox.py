"""Jobs in the caller's transaction (outbox) and exactly-once effects (ledger), on PostgreSQL, Redis and RabbitMQ.

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
from esf.errors import ValidationError
from esf.foundation import Foundation
from tests.conftest import AMQP_URL, require_port

from . import apps
from .conftest import Broker, delete_amqp_queues
from .harness import Worker, settings_env, wait_for


@dataclass
class Setup:
    kind: str
    fnd: Foundation
    engine: sa.Engine
    queue: str
    redis: redis.Redis[bytes]
    env: dict[str, str]
    tmp_path: Path

    def worker(self) -> Worker:
        worker = Worker(self.env, self.tmp_path / "w.log")
        worker.wait_ready()
        return worker

    def waiting(self) -> int:
        """Job messages waiting on the broker (no worker consumes them); a read that moves nothing."""
        if self.kind == "redis":
            return int(self.redis.llen(self.queue))
        from esf.jobs._celery import job_queue

        with self.fnd.celery.connection_for_write() as conn:
            channel = conn.channel()
            job_queue(self.fnd.settings, self.queue)(channel).declare()
            return int(channel.queue_declare(self.queue, passive=True).message_count)

    def check_sent(self, job_id: str) -> None:
        """Exactly one message waits: ``job_id``'s (its id is read on Redis, where the list can be read in place)."""
        wait_for(lambda: self.waiting() >= 1, timeout=30, message="the committed job on the broker")
        assert self.waiting() == 1
        if self.kind == "redis":
            assert [str(json.loads(raw)["headers"]["id"]) for raw in self.redis.lrange(self.queue, 0, -1)] == [job_id]

    def outbox_rows(self, kind: str) -> int:
        with self.engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM esf_outbox WHERE kind = :k")
            return int(conn.execute(query, {"k": kind}).scalar_one())


@pytest.fixture(params=["redis", "amqp"])
def setup(request: pytest.FixtureRequest, pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    extra = {"ESF_DATABASE_URL": pg_url}
    if request.param == "redis":
        env = settings_env(redis_url, queues=(queue,), data_dir=str(tmp_path), extra=extra)
    else:
        require_port(5672, "RabbitMQ")
        env = settings_env(AMQP_URL, queues=(queue,), redis_url=redis_url, data_dir=str(tmp_path), extra=extra)
    fnd = apps.build(esf.Settings.from_env(env))
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id TEXT PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE charges (order_id TEXT NOT NULL)"))
    fnd.events.head()  # migrations
    client = redis.Redis.from_url(redis_url)
    try:
        yield Setup(request.param, fnd, engine, queue, client, env, tmp_path)
    finally:
        fnd.close()
        engine.dispose()
        client.close()
        if request.param == "amqp":
            delete_amqp_queues(Broker(request.param, env, queue))


def test_a_job_enqueued_in_a_transaction_is_sent_only_after_commit(setup: Setup) -> None:
    # Given an open transaction that writes an order and enqueues a job (no worker consumes the queue)
    with Session(setup.engine) as s:
        s.execute(sa.text("INSERT INTO orders(id) VALUES ('o-1')"))
        handle = setup.fnd.jobs.get("t.add").enqueue(1, 2, session=s)
        # When this process's relay drains the outbox before the commit
        setup.fnd.jobs.outbox.drain()
        # Then nothing is on the broker: the row is not visible outside the transaction
        assert setup.waiting() == 0
        s.commit()
    # And after the commit the relay sends it once, with the id enqueue() returned
    setup.check_sent(handle.id)
    # And a worker started now runs it
    worker = setup.worker()
    try:
        assert handle.wait(60) == 3
    finally:
        worker.discard()


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
    wait_for(lambda: setup.outbox_rows("job") == 0, timeout=30, message="the relay's commit")
    setup.check_sent(committed.id)
    assert setup.fnd.jobs.status(rolled_back.id) == "pending"


def test_the_jobs_relay_leaves_the_rows_of_other_kinds(setup: Setup) -> None:
    # Given one transaction that enqueues a job and writes an outbox row of another kind
    with Session(setup.engine) as s:
        outbox_put(s, "mail", {"to": "a@example.com"})
        handle = setup.fnd.jobs.get("t.add").enqueue(2, 2, session=s)
        s.commit()
    # When the jobs relay has sent the job and committed its drain
    wait_for(lambda: setup.outbox_rows("job") == 0, timeout=30, message="the jobs relay's commit")
    setup.check_sent(handle.id)
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


def test_the_sweep_relays_only_rows_that_no_live_relay_took_within_its_bound(setup: Setup) -> None:
    # Given two job rows committed by a process whose relay never ran: one written 120 s ago, one just now
    ids = {}
    with Session(setup.engine) as s:
        for age in ("old", "young"):
            job_id = str(uuid.uuid4())
            ids[age] = (job_id, outbox_put(s, "job", {"job": "t.add", "job_id": job_id, "args": [1, 2], "kwargs": {},
                                                      "headers": {}, "countdown": None, "eta": None, "priority": None}))
        s.commit()
    with setup.engine.begin() as conn:
        conn.execute(sa.text("UPDATE esf_outbox SET created_at = created_at - interval '120 seconds' WHERE id = :i"),
                     {"i": ids["old"][1]})
    sweep = setup.fnd.jobs.get("esf.events.outbox_sweep")
    # When the sweep runs with a bound of 60 s
    assert sweep(after_s=60) == {"relayed": 1}
    # Then the row older than the bound is sent, and the younger one is left for its writer's relay
    setup.check_sent(ids["old"][0])
    assert setup.outbox_rows("job") == 1
    # And so it is with the default bound (services.events_outbox_sweep_after_s, 30 s)
    assert setup.fnd.settings.services.events_outbox_sweep_after_s == 30
    assert sweep() == {"relayed": 0}
    assert setup.outbox_rows("job") == 1
    # And a bad bound is refused with nothing sent
    with pytest.raises(ValidationError):
        sweep(after_s=-1)
    assert setup.outbox_rows("job") == 1
    # When the bound is 0, the young row is relayed too
    assert sweep(after_s=0) == {"relayed": 1}
    assert setup.outbox_rows("job") == 0
