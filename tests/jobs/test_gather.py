"""Scatter-gather with real workers, on Redis and RabbitMQ: results, stragglers, deadlines, min_results, crashes."""

from __future__ import annotations

import uuid

import pytest

from esf.errors import JobFailed
from esf.foundation import Foundation

from .conftest import Broker
from .harness import Worker, wait_for


def _runs(fnd: Foundation, key: str) -> int:
    return int(fnd.jobs.coordinator.get(key) or 0)


def test_every_result_arrives_and_the_callback_runs_once_with_them_in_call_order(
        broker: Broker, worker: Worker, fnd: Foundation) -> None:
    # Given three jobs gathered into t.gather_then
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    g = fnd.gather([item.s(key, 0), ("t.gather_item", [key, 1]), (item, [key, 2], {"seconds": 0.2})],
                   then="t.gather_then", deadline=60)
    # When they all finish
    outcome = g.wait(90)
    # Then the callback got every result, in call order, once
    assert outcome["results"] == [0, 10, 20] and outcome["reason"] == "complete"
    assert outcome["missing"] == [] and outcome["failed"] == {}
    assert g.status()["state"] == "done"
    assert _runs(fnd, f"then-runs:{g.id}") == 1


def test_a_straggler_past_the_deadline_with_continue_gives_the_partial_results_and_is_recorded_late(
        broker: Broker, worker: Worker, fnd: Foundation) -> None:
    # Given two quick jobs and one held until the test releases it, on_timeout="continue"
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    g = fnd.gather([item.s(key, 0), item.s(key, 1), item.s(key, 2, hold=True)], then="t.gather_then",
                   deadline=6, min_results=2, on_timeout="continue")
    # When the deadline passes
    outcome = g.wait(90)
    # Then the callback ran with the two results that arrived
    assert outcome["results"] == [0, 10, None] and outcome["reason"] == "deadline"
    assert outcome["arrived"] == [0, 1] and outcome["missing"] == [2]
    # and the straggler, released now, is recorded as late and changes nothing
    fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
    wait_for(lambda: g.status()["late"] == [2], timeout=60, message="the straggler recorded as late")
    assert g.status()["state"] == "done" and g.status()["results"] == [0, 10, None]
    assert _runs(fnd, f"then-runs:{g.id}") == 1


def test_a_straggler_past_the_deadline_with_fail_dead_letters_the_callback_with_the_reason(
        broker: Broker, worker: Worker, fnd: Foundation) -> None:
    # Given a held job and on_timeout="fail"
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    g = fnd.gather([item.s(key, 0), item.s(key, 1, hold=True)], then="t.gather_then", deadline=4)
    try:
        # When the deadline passes, Then the gather fails and says why
        with pytest.raises(JobFailed) as caught:
            g.wait(90)
        assert caught.value.remote_type == "gather_deadline"
        # and the callback is in its queue's DLQ with the partial outcome, never run
        entries = [e for e in fnd.jobs.dlq.list(broker.queue, limit=100) if e.job_id == g.then_id]
        assert len(entries) == 1
        entry = entries[0]
        assert entry.job == "t.gather_then" and entry.reason == "gather_deadline"
        assert "1 of 2 results by the deadline" in (entry.exception_message or "")
        assert entry.args[0]["results"] == [0, None]
        assert _runs(fnd, f"then-runs:{g.id}") == 0
    finally:
        fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)


def test_min_results_out_of_reach_fails_the_gather_before_its_deadline(
        broker: Broker, worker: Worker, fnd: Foundation) -> None:
    # Given three jobs of which two fail for good, and min_results=2
    key = uuid.uuid4().hex
    g = fnd.gather([("t.gather_item", [key, 0]), ("t.non_retryable", [1]), ("t.non_retryable", [2])],
                   then="t.gather_then", deadline=600, min_results=2, on_timeout="continue")
    # When the second failure makes two results impossible, Then the gather fails at once (not at the deadline)
    with pytest.raises(JobFailed) as caught:
        g.wait(90)
    assert caught.value.remote_type == "gather_min_results"
    status = g.status()
    assert sorted(status["failed"]) == ["1", "2"] and "PermanentError" in status["failed"]["1"]
    entries = [e for e in fnd.jobs.dlq.list(broker.queue, limit=200) if e.job_id == g.then_id]
    assert len(entries) == 1 and entries[0].reason == "gather_min_results"
    assert "fewer than min_results 2" in (entries[0].exception_message or "")


def test_the_closing_job_dying_before_it_sends_the_callback_still_sends_it_once(
        broker: Broker, worker: Worker, fnd: Foundation) -> None:
    # Given a gather whose closing job's process dies right after it recorded the last result
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    g = fnd.gather([item.s(key, 0, hold=True), item.s(key, 1, hold=True)], then="t.gather_then", deadline=120)
    fnd.jobs.coordinator.claim("gather-crash", g.id, 600)
    fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
    # When the job runs again (the worker re-queues a job whose process died)
    outcome = g.wait(120)
    # Then the callback ran once, with both results
    assert fnd.jobs.coordinator.get("gather-crash") is None, "the crash was not injected"
    assert outcome["results"] == [0, 10]
    assert max(_runs(fnd, f"item-runs:{key}:{i}") for i in (0, 1)) == 2
    assert _runs(fnd, f"then-runs:{g.id}") == 1
