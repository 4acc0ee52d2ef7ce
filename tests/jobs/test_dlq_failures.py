"""A job is never dropped on the way to its DLQ or its next attempt (real workers, Redis and RabbitMQ)."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from esf.foundation import Foundation

from .conftest import Broker
from .harness import Worker, wait_for


def entries_of(fnd: Foundation, job_id: str) -> list:  # type: ignore[type-arg]
    return [e for e in fnd.jobs.dlq.entries() if e.job_id == job_id]


def runs(fnd: Foundation, key: str) -> int:
    return int(fnd.jobs.coordinator.get(f"runs:{key}") or 0)


def drain(fnd: Foundation) -> None:
    """Run a few quick jobs through the worker: a job given back to the queue would run before them."""
    handles = [fnd.jobs.enqueue("t.add", i, 1) for i in range(4)]
    assert [h.wait(60) for h in handles] == [i + 1 for i in range(4)]


@pytest.mark.parametrize("job", ["t.fail_keyed", "t.stubborn_keyed"])
def test_a_dead_letter_the_broker_does_not_store_leaves_the_job_on_its_queue_until_it_is_stored(
    fnd: Foundation, worker: Worker, job: str
) -> None:
    # Given a DLQ that refuses this job's entry (a failing handler, or one killed by its hard time limit)
    key = uuid.uuid4().hex
    fnd.jobs.coordinator.incr(f"dlq-fault:{key}", 600)
    args = [key] if job == "t.fail_keyed" else [key, 30]
    # When the job fails
    handle = fnd.jobs.enqueue(job, *args)
    # Then it is not acknowledged: it comes back and runs again, and the refusal is logged
    wait_for(lambda: runs(fnd, key) >= 2, timeout=90, interval=0.3, message="the job to run again")
    assert f"could not dead-letter job {job}[{handle.id}]" in worker.log_path.read_text(errors="replace")
    # When the DLQ takes entries again
    fnd.jobs.coordinator.delete(f"dlq-fault:{key}")
    # Then the job lands in it once, with its arguments, and is not queued any more
    entry = wait_for(lambda: next(iter(entries_of(fnd, handle.id)), None), timeout=90, interval=0.5,
                     message="the DLQ entry")
    assert entry.job == job and entry.args == args
    assert entry.reason in ("retries_exhausted", "time_limit", "delivery_limit")
    drain(fnd)
    assert len(entries_of(fnd, handle.id)) == 1


def test_a_retry_that_cannot_be_published_is_requeued_and_the_job_still_succeeds(
    fnd: Foundation, worker: Worker
) -> None:
    # Given a job failing once, whose retry the broker refuses
    key = uuid.uuid4().hex
    fnd.jobs.coordinator.incr(f"retry-fault:{key}", 600)
    # When it runs
    handle = fnd.jobs.enqueue("t.flaky", key, 1)
    # Then it is given back to its queue instead of deleted, and succeeds on its next run
    assert handle.wait(60) == "ok after 2"
    assert fnd.jobs.coordinator.get(f"retry-fault:{key}") is None  # the fault did fire
    assert entries_of(fnd, handle.id) == []


def test_every_dlq_and_the_dead_letter_exchange_exist_once_a_worker_started(
    broker: Broker, fnd: Foundation, worker: Worker
) -> None:
    # Given a worker that started and has dead-lettered nothing on the service queues
    queues = fnd.settings.jobs.all_queues
    if broker.kind == "amqp":
        # Then the dead-letter exchange and each DLQ exist (a passive declare raises otherwise)
        with Connection(broker.env["ESF_BROKER_URL"]) as conn:
            channel = conn.channel()
            channel.exchange_declare("esf.dlx", "direct", passive=True)
            for q in queues:
                channel.queue_declare(f"{q}.dlq", passive=True)
    else:
        # Then each DLQ is bound in kombu's routing table
        import redis

        client = redis.Redis.from_url(broker.env["ESF_BROKER_URL"])
        for q in queues:
            assert client.exists(f"_kombu.binding.{q}.dlq"), q


@pytest.mark.parametrize("broker", ["redis"], indirect=True)  # a Redis fault: the DLQ key holds a string (WRONGTYPE)
def test_a_dlq_that_redis_itself_refuses_leaves_the_job_on_its_queue_until_it_accepts_entries(
    broker: Broker, fnd: Foundation, worker: Worker
) -> None:
    import redis

    client = redis.Redis.from_url(broker.env["ESF_BROKER_URL"])
    dlq, backup = f"{broker.queue}.dlq", f"{broker.queue}.dlq.kept-{uuid.uuid4().hex[:6]}"
    # Given a DLQ that Redis refuses to push to (the entries already there are set aside)
    if client.exists(dlq):
        client.rename(dlq, backup)
    client.set(dlq, "not a list")
    try:
        key = uuid.uuid4().hex
        # When a job fails
        handle = fnd.jobs.enqueue("t.fail_keyed", key)
        # Then it stays on its queue and runs again
        wait_for(lambda: runs(fnd, key) >= 2, timeout=120, interval=0.3, message="the job to run again")
        assert "WRONGTYPE" in worker.log_path.read_text(errors="replace")
    finally:
        client.delete(dlq)
    # When Redis accepts entries again, Then the job lands in the DLQ once
    entry = wait_for(lambda: next(iter(entries_of(fnd, handle.id)), None), timeout=90, interval=0.5,
                     message="the DLQ entry")
    assert entry.args == [key]
    drain(fnd)
    assert len(entries_of(fnd, handle.id)) == 1
    while client.lmove(backup, dlq, "LEFT", "RIGHT") is not None:  # the entries set aside, back as the oldest
        pass
