"""Job history as events: lifecycle hooks become events, batched off the job path; the timeline tells the story."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from esf.errors import Retry, SkipJob
from esf.events import JOB_EVENT_TYPES, Event, JobHistoryHooks, job_stream_id, render_timeline, timeline
from esf.events._timeline import timeline_json
from esf.hooks import JobContext, JobHooks


@dataclass
class DeadLetterEntry:
    job_id: str
    job: str
    queue: str
    correlation_id: str | None
    reason: str
    exception_type: str
    exception_message: str
    attempts: int


def _ctx(job_id: str = "j-1", attempt: int = 1, correlation_id: str | None = "req-1") -> JobContext:
    now = time.time()
    return JobContext(
        job_id=job_id,
        job_name="billing.charge",
        queue="billing",
        args=("secret-card-number",),
        correlation_id=correlation_id,
        attempt=attempt,
        enqueued_at=now - 0.5,
        started_at=now,
    )


@pytest.fixture
def hooks(store):
    h = JobHistoryHooks(store, flush_interval_s=0.05)
    yield h
    h.close()


def test_job_history_hooks_are_job_hooks(hooks):
    assert isinstance(hooks, JobHooks)


def test_a_successful_job_records_enqueued_started_and_succeeded(store, hooks):
    # Given a job that is enqueued, started and succeeds
    ctx = _ctx()
    hooks.after_enqueue(ctx)
    hooks.before_process(ctx)
    hooks.after_process(ctx, result=42, runtime_s=0.25)
    # When the buffer is flushed
    assert hooks.flush(30)
    # Then its stream holds the three steps in order, correlated with the request
    events = store.read_stream(job_stream_id("j-1"))
    assert [e.event_type for e in events] == ["job.enqueued", "job.started", "job.succeeded"]
    assert {e.correlation_id for e in events} == {"req-1"}
    assert events[2].data["runtime_s"] == 0.25
    assert events[1].data["job"] == "billing.charge" and events[1].data["queue"] == "billing"
    assert events[1].data["attempt"] == 1
    # And the job's arguments are never recorded
    assert all("secret-card-number" not in str(e.to_dict()) for e in events)


def test_a_retried_then_dead_lettered_then_replayed_job_records_each_step(store, hooks):
    # Given a job failing twice, dead-lettered and replayed
    first, second = _ctx(attempt=1), _ctx(attempt=2)
    hooks.before_process(first)
    hooks.after_process(first, exc=ValueError("card declined"), runtime_s=0.1)
    hooks.after_retry(first, exc=ValueError("card declined"), delay_s=2.0)
    hooks.before_process(second)
    hooks.after_process(second, exc=ValueError("card declined again"), runtime_s=0.1)
    entry = DeadLetterEntry(
        "j-1", "billing.charge", "billing", "req-1", "retries exhausted", "ValueError", "card declined again", 2
    )
    hooks.after_dead_letter(entry)
    hooks.after_replay(entry, job_id="j-2")
    assert hooks.flush(30)
    # Then the stream tells the whole story, with the errors
    events = store.read_stream(job_stream_id("j-1"))
    assert [e.event_type for e in events] == [
        "job.started",
        "job.failed",
        "job.retried",
        "job.started",
        "job.failed",
        "job.dead_lettered",
        "job.replayed",
    ]
    failed, retried, dead, replayed = events[1], events[2], events[5], events[6]
    assert (failed.data["error_type"], failed.data["error_message"]) == ("ValueError", "card declined")
    assert (retried.data["delay_s"], retried.data["next_attempt"]) == (2.0, 2)
    assert (dead.data["reason"], dead.data["attempts"], dead.correlation_id) == ("retries exhausted", 2, "req-1")
    assert replayed.data["new_job_id"] == "j-2"
    assert {e.event_type for e in events} <= set(JOB_EVENT_TYPES)


def test_skip_counts_as_success_and_a_retry_request_is_not_a_failure(store, hooks):
    ctx = _ctx(job_id="j-skip")
    hooks.after_process(ctx, exc=SkipJob("nothing to do"))
    hooks.after_process(_ctx(job_id="j-retry"), exc=Retry(delay=1))
    assert hooks.flush(30)
    [skipped] = store.read_stream(job_stream_id("j-skip"))
    assert skipped.event_type == "job.succeeded" and skipped.data["skipped"] is True
    assert store.read_stream(job_stream_id("j-retry")) == []


def test_a_dead_letter_entry_with_missing_attributes_is_still_recorded(store, hooks):
    hooks.after_dead_letter(object())
    assert hooks.flush(30)
    [e] = store.read_all()
    assert e.event_type == "job.dead_lettered" and e.stream_id == "job-unknown"


def test_huge_or_odd_error_messages_are_trimmed_and_cleaned(store, hooks):
    hooks.after_process(_ctx(job_id="j/odd id;--"), exc=RuntimeError("x\x00" + "y" * 10_000))
    assert hooks.flush(30)
    [e] = store.read_all()
    assert e.stream_id == job_stream_id("j/odd id;--") == "job-j/odd_id_--"
    assert len(e.data["error_message"]) <= 2000 and "\x00" not in e.data["error_message"]


def test_many_events_are_written_in_batches(store):
    # Given hooks with small batches and many jobs
    h = JobHistoryHooks(store, batch_size=50, flush_interval_s=0.05)
    try:
        for i in range(300):
            h.after_enqueue(_ctx(job_id=f"bulk-{i}"))
        assert h.flush(60)
    finally:
        h.close()
    # Then every event is stored exactly once
    assert store.head() == 300
    assert h.pending() == 0


def test_the_timeline_shows_jobs_and_application_events_of_one_request(store, hooks):
    # Given application events and job events sharing a correlation id, and noise from another request
    store.append(Event("order.created", {"order_id": 42}, correlation_id="req-1", stream_id="order-42"))
    ctx = _ctx()
    hooks.after_enqueue(ctx)
    hooks.before_process(ctx)
    hooks.after_process(ctx, exc=KeyError("missing"), runtime_s=0.01)
    hooks.after_enqueue(_ctx(job_id="other", correlation_id="req-2"))
    assert hooks.flush(30)
    # When the timeline of req-1 is read and rendered
    events = timeline(store, "req-1")
    text = render_timeline("req-1", events)
    # Then it holds only req-1's events, in order, readable
    assert [e.event_type for e in events] == ["order.created", "job.enqueued", "job.started", "job.failed"]
    assert "Timeline of req-1" in text and "4 event(s)" in text
    assert "job.failed" in text and "error=KeyError" in text and "order.created" in text
    assert timeline_json(events)[0]["event_type"] == "order.created"
    assert render_timeline("nope", []) == "No events with correlation id 'nope'."


def test_job_events_go_to_the_spool_when_the_database_is_unreachable(tmp_path):
    # Given a store whose PostgreSQL does not answer (nothing listens on the port)
    import socket

    from esf.plugins.sqlalchemy_events import SqlEventStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = SqlEventStore(f"postgresql://postgres@127.0.0.1:{port}/none", spool_path=tmp_path / "spool.sqlite")
    hooks = JobHistoryHooks(store, flush_interval_s=0.05)
    try:
        # When a job runs
        ctx = _ctx(job_id="j-down")
        hooks.after_enqueue(ctx)
        hooks.before_process(ctx)
        hooks.after_process(ctx, runtime_s=0.1)
        # Then the hooks hand the events over without error and they wait in the durable spool
        assert hooks.flush(60)
        health = store.health()
        assert health["status"] == "degraded" and health["spool_depth"] == 3
    finally:
        hooks.close()
        store.close()


class _SlowStore:
    """Wraps a store; each append waits ``delay_s`` first (a database that falls behind)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.calls = 0

    def append(self, events, **kwargs):
        self.calls += 1
        time.sleep(self.delay_s)
        return self.inner.append(events, **kwargs)


@pytest.mark.parametrize("batch_size", [10, 500])
def test_a_full_buffer_makes_the_hook_wait_and_nothing_is_dropped(store, batch_size):
    # Given a writer that falls behind and room for only 20 buffered events (batches smaller or larger)
    slow = _SlowStore(store, 0.05)
    h = JobHistoryHooks(slow, max_buffer=20, batch_size=batch_size, flush_interval_s=0.01)
    try:
        # When 200 events are emitted as fast as the hooks allow
        for i in range(200):
            h.after_enqueue(_ctx(job_id=f"burst-{i}"))
            # Then the buffer never holds more than max_buffer events (plus the batch being written)
            assert h.pending() <= 20 + min(batch_size, 20)
        assert h.flush(60)
    finally:
        h.close()
    # And every event is stored once, in order
    stored = store.read_all(limit=1000)
    assert [e.data["job_id"] for e in stored] == [f"burst-{i}" for i in range(200)]
    assert slow.calls >= 200 // min(batch_size, 20)


def test_events_emitted_after_close_are_still_written(store):
    # Given hooks that were closed (their writer thread stopped)
    h = JobHistoryHooks(store, flush_interval_s=0.02)
    h.after_enqueue(_ctx(job_id="before-close"))
    h.close()
    assert store.head() == 1
    # When the same hooks record another event
    h.after_enqueue(_ctx(job_id="after-close"))
    # Then a new writer writes it
    try:
        assert h.flush(30)
    finally:
        h.close()
    assert [e.data["job_id"] for e in store.read_all()] == ["before-close", "after-close"]


def test_a_flush_writes_what_is_buffered_without_waiting_for_the_writer_s_linger(store):
    # Given a writer that lingers an hour for more events, asleep on its empty buffer
    h = JobHistoryHooks(store, flush_interval_s=3600)
    try:
        h.append_later(Event("warm.up", {}))
        assert h.flush(60)
        # When one event is buffered and flushed (a Foundation's close does this)
        h.after_enqueue(_ctx(job_id="flushed"))
        # Then the flush returns with it written: the wake-up of the flush is not spent on the empty wait
        assert h.flush(60) and h.pending() == 0
        assert [e.data["job_id"] for e in store.read_all() if e.event_type == "job.enqueued"] == ["flushed"]
    finally:
        h.close(timeout=5)


def test_flush_with_nothing_buffered_returns_at_once(store):
    h = JobHistoryHooks(store)
    started = time.monotonic()
    assert h.flush(5) and h.pending() == 0
    assert time.monotonic() - started < 1
    h.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain-id-1", "plain-id-1"),
        ("x" * 300, "x" * 200),
        ("bad\x00id\x1f\x7f", "badid"),
        ("\x01\x02", None),
        ("", None),
        (42, None),
    ],
)
def test_correlation_ids_are_cleaned_on_the_fast_and_the_slow_path(store, hooks, value, expected):
    hooks.after_enqueue(_ctx(job_id="ref", correlation_id=value))
    assert hooks.flush(30)
    [e] = store.read_all()
    assert e.correlation_id == expected


@pytest.mark.parametrize("job_id", ["01a2-uuid-like", "a" * 196, "a" * 197, "../x", "semi;colon", "é"])
def test_job_stream_ids_match_the_stream_pattern_whatever_the_job_id(job_id):
    from esf.events._validation import MAX_STREAM_ID_CHARS, STREAM_ID_RE

    stream = job_stream_id(job_id)
    assert stream.startswith("job-") and len(stream) <= MAX_STREAM_ID_CHARS and STREAM_ID_RE.match(stream)
    assert job_stream_id(job_id) == stream  # stable
