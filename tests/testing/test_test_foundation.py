"""An application's own tests on esf.testing.foundation(): jobs run in this process with ESF's semantics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import esf.testing
from esf.errors import JobFailed
from esf.hooks import JobHooks
from esf.jobs import DeadLetter
from esf.testing import TestFoundation


class Seen(JobHooks):
    """An application's hooks: they run in the test as on a worker."""

    def __init__(self) -> None:
        self.dead: list[str] = []

    def after_dead_letter(self, entry: DeadLetter) -> None:
        self.dead.append(entry.job_id)


SEEN = Seen()


@pytest.fixture(scope="module")
def fnd() -> Iterator[TestFoundation]:
    with esf.testing.foundation(hooks=[SEEN]) as started:
        yield started


def _name(what: str) -> str:
    return f"app.{what}_{uuid.uuid4().hex[:6]}"


def test_a_job_that_fails_twice_then_succeeds_returns_its_result_after_two_retries(fnd: TestFoundation) -> None:
    # Given a job whose first two attempts fail
    attempts: list[int] = []

    @fnd.job(name=_name("charge"), retries=2, backoff=0.05)
    def charge(order_id: int) -> str:
        attempts.append(order_id)
        if len(attempts) < 3:
            raise ConnectionError("payment gateway down")
        return f"charged {order_id}"

    # When it is enqueued
    handle = charge.enqueue(7)
    # Then the third attempt's result comes back, and nothing is dead-lettered
    assert handle.wait(60) == "charged 7"
    assert attempts == [7, 7, 7]
    assert [d for d in fnd.dead_letters() if d.job == charge.name] == []
    # And the job history shows both retries
    types = [e.event_type for e in fnd.history(handle.id)]
    assert types.count("job.retried") == 2 and types[-1] == "job.succeeded"
    # And the telemetry counted them
    assert fnd.metric_value("esf.jobs.retried", job=charge.name) == 2
    assert fnd.metric_value("esf.jobs.succeeded", job=charge.name) == 1


def test_a_job_that_always_fails_ends_in_the_dead_letter_queue(fnd: TestFoundation) -> None:
    # Given a job that fails on every attempt
    @fnd.job(name=_name("sync"), retries=1, backoff=0.05)
    def sync(account: str) -> None:
        raise ValueError(f"account {account} is closed")

    # When it is enqueued, Then waiting on it raises once its retries are spent
    handle = sync.enqueue("acme")
    with pytest.raises(JobFailed):
        handle.wait(60)
    # And its dead letter holds the arguments and the reason
    [letter] = fnd.wait_for(lambda: [d for d in fnd.dead_letters() if d.job_id == handle.id], what="dead letter")
    assert (letter.job, letter.args, letter.reason, letter.attempts) == (sync.name, ["acme"], "retries_exhausted", 2)
    assert letter.exception_type == "ValueError"
    # And the hooks and the telemetry saw it
    assert handle.id in SEEN.dead
    assert fnd.metric_value("esf.jobs.dead_lettered", job=sync.name) == 1
    assert fnd.metric_value("esf.jobs.failed", job=sync.name) == 2


def test_on_the_in_memory_recorder_jobs_retry_and_record_their_history_without_a_database() -> None:
    from esf.events import InMemoryEventRecorder

    # Given a test Foundation whose event store is the in-memory recorder (the base tier)
    recorder = InMemoryEventRecorder()
    with esf.testing.foundation(events=recorder) as fnd:
        attempts: list[int] = []

        @fnd.job(name=_name("flaky"), retries=1, backoff=0.05)
        def flaky() -> int:
            attempts.append(1)
            if len(attempts) < 2:
                raise ConnectionError("down")
            return len(attempts)

        # When a job fails once, Then it is retried and its history is in the recorder
        handle = flaky.enqueue()
        assert handle.wait(60) == 2
        types = [e.event_type for e in fnd.history(handle.id)]
        assert types.count("job.retried") == 1 and types[-1] == "job.succeeded"
        assert recorder.head() > 0
