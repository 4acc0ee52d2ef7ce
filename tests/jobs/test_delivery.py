"""Retries, dead-letter queues, replay, poison messages, uniqueness and workflows on real workers."""

from __future__ import annotations

import pickle
import time
import uuid

import pytest
from kombu import Producer

from esf.errors import JobFailed
from esf.foundation import Foundation

from .conftest import Broker
from .harness import Worker, wait_for


def dlq_entry(fnd: Foundation, job_id: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    def find():  # type: ignore[no-untyped-def]
        return next((e for e in fnd.jobs.dlq.entries() if e.job_id == job_id), None)

    return wait_for(find, timeout=timeout, interval=0.5, message=f"DLQ entry for {job_id}")


def test_a_job_that_fails_transiently_is_retried_with_backoff_and_then_succeeds(
    fnd: Foundation, worker: Worker
) -> None:
    # Given a job failing twice with a retryable error
    key = uuid.uuid4().hex
    # When it is enqueued
    handle = fnd.jobs.enqueue("t.flaky", key, 2)
    # Then it succeeds on the third attempt
    assert handle.wait(60) == "ok after 3"
    assert handle.status() == "succeeded"


def test_a_job_that_exhausts_its_retries_is_dead_lettered_with_its_failure_and_replay_succeeds(
    fnd: Foundation, worker: Worker, broker: Broker
) -> None:
    # Given a job that always fails for this argument
    handle = fnd.jobs.enqueue("t.always_fail", -1, correlation_id="corr-dlq-1")
    # When its retries run out
    with pytest.raises(JobFailed) as failed:
        handle.wait(60)
    assert failed.value.remote_type == "ValueError"
    # Then the DLQ holds it with every field
    entry = dlq_entry(fnd, handle.id)
    assert entry.job == "t.always_fail"
    assert entry.args == [-1]
    assert entry.queue == broker.queue
    assert entry.correlation_id == "corr-dlq-1"
    assert entry.reason == "retries_exhausted"
    assert entry.exception_type == "ValueError"
    assert "must not be negative" in (entry.exception_message or "")
    assert "ValueError" in (entry.traceback or "")
    assert entry.attempts == 3
    assert entry.first_attempt_at and entry.last_attempt_at and entry.first_attempt_at <= entry.last_attempt_at
    assert fnd.jobs.dlq.show(entry.id).job_id == handle.id
    # When it is replayed with corrected arguments
    before = int(fnd.jobs.coordinator.get("fixed") or 0)
    sent = fnd.jobs.dlq.replay([entry.id], args=[1])
    # Then it runs again under the same id and succeeds (a wait right after the replay waits for the new run,
    # not the dead-lettered run's stored failure), and leaves the DLQ
    assert sent == [handle.id]
    assert handle.wait(60) is None
    wait_for(lambda: int(fnd.jobs.coordinator.get("fixed") or 0) > before, message="replayed job ran")
    wait_for(lambda: fnd.jobs.status(handle.id) == "succeeded", message="replayed job succeeded")
    assert all(e.job_id != handle.id for e in fnd.jobs.dlq.entries())


def test_a_non_retryable_error_is_dead_lettered_at_once(fnd: Foundation, worker: Worker) -> None:
    handle = fnd.jobs.enqueue("t.non_retryable", 7)
    with pytest.raises(JobFailed):
        handle.wait(60)
    entry = dlq_entry(fnd, handle.id)
    assert entry.reason == "non_retryable"
    assert entry.exception_type == "PermanentError"
    assert entry.attempts == 1


def test_a_job_past_its_hard_time_limit_is_dead_lettered_once_with_every_field_and_not_requeued(
    fnd: Foundation, worker: Worker, broker: Broker
) -> None:
    # Given a job that ignores its soft time limit (1 s) and runs past the hard one (2 s)
    key = uuid.uuid4().hex
    enqueued = time.time()
    handle = fnd.jobs.enqueue("t.stubborn_keyed", key, 30, correlation_id=f"corr-{key}")
    # Then it is dead-lettered with every field of its failure
    entry = dlq_entry(fnd, handle.id, timeout=90)
    assert entry.reason == "time_limit"
    assert entry.job == "t.stubborn_keyed" and entry.args == [key, 30] and entry.kwargs == {}
    assert entry.queue == broker.queue and entry.correlation_id == f"corr-{key}"
    assert entry.exception_type == "TimeoutError" and "hard time limit" in (entry.exception_message or "")
    assert entry.attempts == 1 and entry.replay == 0 and entry.raw_body is None
    assert entry.first_attempt_at is not None and entry.last_attempt_at is not None
    assert enqueued - 1 <= entry.first_attempt_at <= entry.last_attempt_at <= entry.dead_lettered_at
    # And the worker keeps running jobs; the killed job was not also given back to its queue
    handles = [fnd.jobs.enqueue("t.add", i, 3) for i in range(4)]
    assert [h.wait(60) for h in handles] == [i + 3 for i in range(4)]
    assert int(fnd.jobs.coordinator.get(f"runs:{key}") or 0) == 1
    assert [e.id for e in fnd.jobs.dlq.entries() if e.job_id == handle.id] == [entry.id]
    if broker.kind == "redis":  # a job given back waits at the far end of the list, or runs unacknowledged
        import redis

        client = redis.Redis.from_url(broker.env["ESF_BROKER_URL"])
        held = [*client.lrange(broker.queue, 0, -1), *client.hvals("unacked")]
        assert not [m for m in held if handle.id.encode() in m]


def _publish_raw(fnd: Foundation, queue: str, body: bytes, content_type: str, headers: dict) -> None:  # type: ignore[type-arg]
    with fnd.celery.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body, exchange=queue, routing_key=queue, content_type=content_type, content_encoding="binary",
            headers=headers, serializer=None,
        )


def test_poison_messages_are_dead_lettered_and_the_worker_keeps_running(
    fnd: Foundation, worker: Worker, broker: Broker
) -> None:
    # Given three messages no job can run: garbage, an unknown job name, a pickled body
    garbage_id, unknown_id, pickle_id = (str(uuid.uuid4()) for _ in range(3))
    _publish_raw(fnd, broker.queue, b"\x00\xff not a message", "application/json", {"id": garbage_id})
    fnd.celery.send_task("no.such.job", [1], task_id=unknown_id, queue=broker.queue)
    _publish_raw(fnd, broker.queue, pickle.dumps(([1, 2], {}, {})), "application/x-python-serialize",
                 {"id": pickle_id, "task": "t.add", "lang": "py"})
    # Then each lands in the DLQ with its reason
    reasons = {}
    for job_id in (garbage_id, unknown_id, pickle_id):
        reasons[job_id] = dlq_entry(fnd, job_id).reason
    assert reasons[garbage_id] == "undecodable"
    assert reasons[unknown_id] == "unknown_job"
    assert reasons[pickle_id] == "undecodable"
    # And the worker still runs jobs
    assert fnd.jobs.enqueue("t.add", 20, 22).wait(60) == 42


def test_unique_for_drops_a_duplicate_enqueue_and_returns_the_first_handle(fnd: Foundation, worker: Worker) -> None:
    n = uuid.uuid4().int % 100000
    first = fnd.jobs.enqueue("t.unique", n)
    second = fnd.jobs.enqueue("t.unique", n)
    assert second.id == first.id and second.duplicate and not first.duplicate
    other = fnd.jobs.enqueue("t.unique", n + 1)
    assert other.id != first.id
    keyed = fnd.jobs.enqueue("t.unique", n + 2, idempotency_key=f"k-{n}")
    again = fnd.jobs.enqueue("t.unique", n + 3, idempotency_key=f"k-{n}")
    assert again.id == keyed.id
    assert first.wait(60) == n


def test_the_correlation_id_travels_into_jobs_a_handler_enqueues(fnd: Foundation, worker: Worker) -> None:
    child_id = fnd.jobs.enqueue("t.spawn", 1, correlation_id="corr-spawn").wait(60)
    assert fnd.jobs.wait(child_id, 60) == 2
    result = fnd.celery.AsyncResult(child_id)
    assert (result.kwargs, result.args) == ({}, [1, 1])


def test_chain_group_and_chord_carry_the_correlation_id_through_every_step(fnd: Foundation, worker: Worker) -> None:
    echo = fnd.jobs.get("t.echo_cid")
    total = fnd.jobs.get("t.total")
    add = fnd.jobs.get("t.add")
    # chain: each step gets the previous result and sees the same correlation id
    flow = fnd.chain(echo.s("start"), echo.s(), correlation_id="corr-chain")
    assert flow.wait(60) == [["start", "corr-chain"], "corr-chain"]
    # group: parallel results as a list
    assert fnd.group(add.s(1, 1), add.s(2, 2), correlation_id="corr-group").wait(60) == [2, 4]
    # chord: the body gets the header results
    assert fnd.chord([add.s(1, 2), add.s(3, 4)], total.s(), correlation_id="corr-chord").wait(60) == 10
    # a failing step surfaces to the caller
    with pytest.raises(JobFailed) as failed:
        fnd.chain(add.s(1, 1), fnd.jobs.get("t.non_retryable").s(), correlation_id="corr-fail").wait(60)
    assert failed.value.remote_type == "PermanentError"


def test_a_global_rate_limit_spaces_jobs_per_partition(fnd: Foundation, worker: Worker) -> None:
    # Given a job limited to 5 per second per tenant (bursts of 5)
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    # When 12 jobs of one tenant are enqueued at once
    handles = [fnd.jobs.enqueue("t.limited", tenant=tenant, i=i) for i in range(12)]
    started = sorted(h.wait(90) for h in handles)
    # Then no more than the burst ran before tokens had to refill: the last
    # 7 needed at least 7/5 s of refill (a lower bound, whatever the machine's speed)
    assert started[-1] - started[0] >= (12 - 5) / 5 * 0.9
    # And the bucket is kept per tenant, shared by every worker
    client = fnd.redis
    assert client.exists(f"esf:rate:t.limited:{tenant}")


def _types(fnd: Foundation, correlation_id: str) -> list[str]:
    return [e.event_type for e in fnd.events.read_correlation(correlation_id)]


def test_every_step_of_a_job_is_an_event_in_the_store(fnd: Foundation, worker: Worker) -> None:
    # Given a job that fails once, then succeeds
    cid = f"hist-{uuid.uuid4().hex[:8]}"
    assert fnd.jobs.enqueue("t.flaky", uuid.uuid4().hex, 1, correlation_id=cid).wait(60) == "ok after 2"
    # Then its history holds each step, correlated
    expected = ["job.enqueued", "job.started", "job.retried", "job.started", "job.succeeded"]
    wait_for(lambda: all(t in _types(fnd, cid) for t in expected), timeout=90, message="job history")
    types = _types(fnd, cid)
    assert types.count("job.started") == 2 and types.count("job.succeeded") == 1
    # And a dead-lettered then replayed job records both
    cid2 = f"hist-{uuid.uuid4().hex[:8]}"
    handle = fnd.jobs.enqueue("t.non_retryable", 1, correlation_id=cid2)
    entry = wait_for(lambda: next((e for e in fnd.jobs.dlq.entries() if e.job_id == handle.id), None), timeout=60)
    fnd.jobs.dlq.replay([entry.id])
    wait_for(lambda: {"job.failed", "job.dead_lettered", "job.replayed"} <= set(_types(fnd, cid2)), timeout=90,
             message="dead-letter and replay events")


def test_enqueue_subscribes_to_no_result_and_wait_finds_one_stored_before_it(
    fnd: Foundation, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = fnd.celery.backend.result_consumer
    subscribed: list[str] = []
    real = consumer.consume_from
    monkeypatch.setattr(consumer, "consume_from", lambda task_id: (subscribed.append(task_id), real(task_id))[1])
    # When a job is enqueued, nothing subscribes to its result (one broker command per enqueue)
    handle = fnd.jobs.get("t.add").enqueue(2, 3)
    assert subscribed == []
    # And a wait that starts after the result was stored still gets it
    deadline = time.monotonic() + 60
    while fnd.jobs.status(handle.id) != "succeeded":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    assert handle.wait(10) == 5
    assert subscribed == [handle.id]
