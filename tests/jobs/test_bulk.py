"""``Job.enqueue_many``: batches of jobs on Redis, RabbitMQ and the embedded broker."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.errors import (
    BatchNotSent,
    SerializationError,
    ServiceUnavailable,
    UnknownJob,
    UnknownQueue,
    ValidationError,
)
from esf.foundation import Foundation
from esf.hooks import JobContext, JobHooks
from esf.jobs._bulk import _Confirms
from tests.conftest import AMQP_URL, REDIS_HOST, REDIS_PORT, lease_redis_db, require_port

from . import apps
from .conftest import Broker, delete_amqp_queues
from .harness import Worker, settings_env


class Counting(JobHooks):
    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, ctx: JobContext) -> None:
        self.before.append(ctx.job_id)

    def after_enqueue(self, ctx: JobContext) -> None:
        self.after.append(ctx.job_id)


@pytest.fixture
def idle(broker: Broker, tmp_path: Path) -> Iterator[tuple[Foundation, str]]:
    """A Foundation on the module's broker with a queue of its own that no worker consumes."""
    queue = f"idle-{uuid.uuid4().hex[:8]}"
    env = {**broker.env, **settings_env(broker.env["ESF_BROKER_URL"], queues=(queue,), data_dir=str(tmp_path))}
    fnd = apps.build(esf.Settings.from_env(env))
    try:
        yield fnd, queue
    finally:
        fnd.close()
        if broker.kind == "amqp":
            delete_amqp_queues(Broker(broker.kind, env, queue))
        else:
            import redis

            redis.Redis.from_url(env["ESF_BROKER_URL"]).delete(queue)


def queued(fnd: Foundation, queue: str) -> int:
    """Messages waiting in ``queue`` (declared if missing)."""
    from esf.jobs._celery import job_queue

    with fnd.celery.connection_for_write() as conn:
        channel = conn.channel()
        job_queue(fnd.settings, queue)(channel).declare()
        if fnd.settings.broker_kind == "amqp":
            return int(channel.queue_declare(queue, passive=True).message_count)
        return int(channel._size(queue))  # kombu's virtual transports: every priority step


def test_every_job_of_a_batch_runs_once_and_the_handles_keep_the_order(fnd: Foundation, worker: Worker) -> None:
    # Given 120 jobs sent in batches of 50 (three round trips)
    add = fnd.jobs.get("t.add")
    handles = add.enqueue_many([[i, 1000] for i in range(120)], batch_size=50, correlation_id="corr-many")
    # Then each handle is its own job, in the order of the items
    assert len({h.id for h in handles}) == 120
    assert all(h.correlation_id == "corr-many" and not h.duplicate for h in handles)
    assert [h.wait(90) for h in handles] == [i + 1000 for i in range(120)]
    # The service takes the job's name
    assert [h.wait(60) for h in fnd.jobs.enqueue_many("t.add", [[1, 1], [2, 2]])] == [2, 4]


def test_items_as_dicts_take_kwargs_keys_and_correlation_ids(fnd: Foundation, worker: Worker) -> None:
    n = uuid.uuid4().int % 100000
    add = fnd.jobs.get("t.add")
    handles = add.enqueue_many([{"args": [1], "kwargs": {"y": 2}, "correlation_id": "c-1"},
                                {"kwargs": {"x": 3, "y": 4}}])
    assert [h.wait(60) for h in handles] == [3, 7]
    assert handles[0].correlation_id == "c-1" and handles[1].correlation_id not in (None, "c-1")
    # unique_for drops duplicates inside one call and against earlier enqueues
    unique = fnd.jobs.get("t.unique")
    first = unique.enqueue(n)
    many = unique.enqueue_many([[n], [n + 1], [n + 1], {"args": [n + 2], "idempotency_key": f"k-{n}"},
                                {"args": [n + 3], "idempotency_key": f"k-{n}"}])
    assert many[0].id == first.id and many[0].duplicate
    assert many[2].id == many[1].id and many[2].duplicate and not many[1].duplicate
    assert many[4].id == many[3].id and many[4].duplicate
    assert [h.wait(60) for h in (many[1], many[3])] == [n + 1, n + 2]


def test_an_invalid_item_sends_nothing(idle: tuple[Foundation, str]) -> None:
    fnd, queue = idle
    hooks = Counting()
    fnd.add_hooks(hooks)
    add = fnd.jobs.get("t.add")
    before = queued(fnd, queue)
    cases: list[tuple[object, type[Exception], int | None]] = [
        ([[1, 2], [3, 4], [5, 6], [object(), 1]], SerializationError, 3),
        ([[1, 2], "not a list"], ValidationError, 1),
        ([[1, 2], {"args": [1], "kwrags": {}}], ValidationError, 1),
        ([[1, 2], {"args": "1, 2"}], ValidationError, 1),
        ([[1, 2], {"args": [1, 2], "idempotency_key": 7}], ValidationError, 1),
        ([[1, 2], [float("nan"), 1]], SerializationError, 1),
        ([[1, 2], ["x" * (2 * 1024 * 1024), 1]], ValidationError, 1),
        ("[1, 2]", ValidationError, None),
        ({"args": [1, 2]}, ValidationError, None),
        (42, ValidationError, None),
    ]
    for items, error, index in cases:
        with pytest.raises(error) as raised:
            add.enqueue_many(items)  # type: ignore[arg-type]
        assert raised.value.details.get("item") == index, items
        if index is not None:
            assert str(raised.value).startswith(f"item {index}")
    with pytest.raises(UnknownQueue):
        add.enqueue_many([[1, 2]], queue="no-such-queue")
    with pytest.raises(UnknownJob):
        fnd.jobs.enqueue_many("no.such.job", [[1, 2]])
    for size in (0, -1, 10_001, 2.5, True, "500"):
        with pytest.raises(ValidationError, match="batch_size"):
            add.enqueue_many([[1, 2]], batch_size=size)  # type: ignore[arg-type]
    # Nothing reached the hooks or the broker
    assert hooks.before == [] and hooks.after == []
    assert queued(fnd, queue) == before
    assert add.enqueue_many([]) == []


def test_a_batch_reaches_the_broker_before_enqueue_many_returns(idle: tuple[Foundation, str]) -> None:
    fnd, queue = idle
    hooks = Counting()
    fnd.add_hooks(hooks)
    handles = fnd.jobs.get("t.add").enqueue_many([[i, i] for i in range(1234)], batch_size=500)
    # Every message is on the broker (confirmed on RabbitMQ, pipelined on Redis) and was reported once
    assert queued(fnd, queue) == 1234
    assert hooks.before == hooks.after == [h.id for h in handles]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_raises_batch_not_sent_and_releases_unique_claims(broker: Broker,
                                                                                 tmp_path: Path) -> None:
    if broker.kind == "redis":
        url = f"redis://127.0.0.1:{free_port()}/0"
    else:
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    redis_url = broker.env.get("ESF_REDIS_URL", broker.env["ESF_BROKER_URL"])
    env = settings_env(url, queues=(broker.queue,), redis_url=redis_url, data_dir=str(tmp_path),
                       extra={"ESF_JOBS_SERVICE_NAMESPACE": "esf-bulk-down"})
    fnd = apps.build(esf.Settings.from_env(env))
    try:
        n = uuid.uuid4().int % 100000
        with pytest.raises(BatchNotSent) as raised:
            fnd.jobs.get("t.unique").enqueue_many([[n], [n + 1], [n + 2]], batch_size=2)
        err = raised.value
        assert isinstance(err, ServiceUnavailable) and err.code == "batch_not_sent"
        # Nothing reached the broker: the first batch and the one after it were not sent
        assert err.details["sent"] == [] and err.details["refused"] == [] and err.details["uncertain"] == []
        assert len(err.details["not_sent"]) == 3 and "none of a batch of 2 jobs was sent" in str(err)
        # The claims were released: enqueueing the same jobs later is not dropped as a duplicate
        claims = [f"unique:{fnd.jobs.get('t.unique').unique_key(p)}"
                  for p in (fnd.jobs.get("t.unique").prepare([x], {}, correlation_id=None, idempotency_key=None,
                                                              countdown=None, eta=None, queue=None)
                            for x in (n, n + 1, n + 2))]
        assert [fnd.jobs.coordinator.get(c) for c in claims] == [None, None, None]
        # And so does a single enqueue that could not be sent
        with pytest.raises(ServiceUnavailable):
            fnd.jobs.get("t.unique").enqueue(n)
        assert fnd.jobs.coordinator.get(claims[0]) is None
    finally:
        fnd.close()


def test_confirms_settle_single_and_multiple_acks_and_name_the_refused() -> None:
    c = _Confirms(6)
    c.ack(2, False)
    assert not c.complete
    c.ack(3, True)  # 1 and 3 (2 was already settled)
    c.nack(5, False)
    assert not c.complete
    c.ack(6, True)
    assert c.complete and c.refused == {5}
    c.ack(99, True)  # a tag beyond the batch changes nothing
    assert c.refused == {5}


def test_enqueue_many_on_the_embedded_broker(tmp_path: Path) -> None:
    env = settings_env("", queues=("default",), data_dir=str(tmp_path))
    fnd = apps.build(esf.Settings.from_env(env))
    try:
        assert fnd.settings.broker_kind == "embedded"
        handles = fnd.jobs.get("t.add").enqueue_many([[i, 1] for i in range(30)], batch_size=7)
        assert len(handles) == 30
        assert queued(fnd, "default") == 30
    finally:
        fnd.close()


def test_the_jobs_a_full_queue_refuses_are_named_and_the_rest_are_sent(tmp_path: Path) -> None:
    # Publisher confirms and their basic.nack are RabbitMQ's: this test runs there only.
    require_port(5672, "RabbitMQ")
    queue = f"full-{uuid.uuid4().hex[:8]}"
    with lease_redis_db() as db:
        env = settings_env(AMQP_URL, queues=(queue,), redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}",
                           data_dir=str(tmp_path))
        fnd = apps.build(esf.Settings.from_env(env))
        try:
            _refusals(fnd, queue)
        finally:
            fnd.close()
            delete_amqp_queues(Broker("amqp", env, queue))


def _refusals(fnd: Foundation, queue: str) -> None:
    import shutil
    import subprocess

    ctl = shutil.which("rabbitmqctl")
    assert ctl, "rabbitmqctl (Debian package rabbitmq-server) is needed to set a queue length policy"
    policy = f"esf-test-{queue}"
    # Given a full queue: the broker caps it at 5 messages (ESF declares its queues with
    # x-overflow=reject-publish)
    queued(fnd, queue)
    subprocess.run([ctl, "set_policy", "--apply-to", "queues", policy, f"^{queue}$", '{"max-length": 5}'],
                   check=True, capture_output=True, timeout=60)
    try:
        add = fnd.jobs.get("t.add")
        accepted = 0
        for _ in range(200):  # fill it until the broker refuses one (it applies the policy a little later)
            try:
                add.enqueue(1, 1)
                accepted += 1
            except ServiceUnavailable as exc:
                assert "refused" in str(exc)
                break
            if accepted >= 5:
                time.sleep(0.05)
        else:
            raise AssertionError("the queue length policy never took effect")
        hooks = Counting()
        fnd.add_hooks(hooks)
        # When 8 more jobs are sent in one batch
        with pytest.raises(BatchNotSent) as raised:
            add.enqueue_many([[i, i] for i in range(8)])
        # Then the broker's refusals are named, the others were sent and reported
        details = raised.value.details
        # (a quorum queue applies its limit a little late under pipelined publishes: it may take
        # a few more, but what it takes is exactly what was reported sent)
        assert details["refused"] and len(details["sent"]) + len(details["refused"]) == 8
        assert details["uncertain"] == [] and details["not_sent"] == []
        assert hooks.after == details["sent"]
        assert queued(fnd, queue) == accepted + len(details["sent"])
    finally:
        subprocess.run([ctl, "clear_policy", policy], check=False, capture_output=True, timeout=60)


def test_a_broker_lost_in_the_middle_of_a_batch_makes_its_jobs_uncertain(private_redis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a Foundation whose batch connection to Redis is open
    env = settings_env(private_redis.url, queues=("bulk",), data_dir=str(tmp_path),
                       extra={"ESF_TELEMETRY_ENABLED": "false", "ESF_EVENTS_RECORD_JOB_EVENTS": "false"})
    fnd = apps.build(esf.Settings.from_env(env))
    try:
        add = fnd.jobs.get("t.add")
        first = add.enqueue_many([[1, 1], [2, 2]])
        # When Redis goes away before the next batch is flushed
        private_redis.kill()
        with pytest.raises(BatchNotSent) as raised:
            add.enqueue_many([[i, i] for i in range(5)], batch_size=3)
        # Then the jobs of the batch in flight are uncertain, the next batch's were not sent
        details = raised.value.details
        assert len(details["uncertain"]) == 3 and len(details["not_sent"]) == 2 and details["sent"] == []
        # And the batch connection recovers once Redis is back
        private_redis.start()
        again = add.enqueue_many([[7, 7]])
        assert len(again) == 1 and len(first) == 2
    finally:
        fnd.close()
