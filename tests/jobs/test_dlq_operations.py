"""Dead-letter queues without a worker: reads move nothing, pages cover every entry once,
replay and purge take each entry exactly once, even when they race or are killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from esf.errors import NotFound, UnknownQueue, ValidationError
from esf.foundation import Foundation
from esf.jobs._deadletter import DeadLetter

from .conftest import Broker
from .harness import ROOT, wait_for


def make_entry(queue: str, *, age_s: float = 0.0, raw: bool = False) -> DeadLetter:
    now = time.time() - age_s
    job_id = str(uuid.uuid4())
    return DeadLetter(
        id=str(uuid.uuid4()), job_id=job_id, job="t.add", queue=queue, args=[1, 2], reason="non_retryable",
        exception_type="ValueError", exception_message="bad", attempts=1, first_attempt_at=now,
        last_attempt_at=now, dead_lettered_at=now,
        raw_body="bm90IGpzb24=" if raw else None, content_type="application/x-garbage" if raw else None,
    )


def publish(fnd: Foundation, entries: list[DeadLetter]) -> list[DeadLetter]:
    for e in entries:
        fnd.jobs.dlq.publish(e)
    return entries


def queued_job_ids(broker: Broker, queue: str) -> list[str]:
    """Ids of the job messages waiting on ``queue`` (read without consuming them)."""
    if broker.kind == "redis":
        from esf.jobs._dlq_stores import decode_kombu_payload

        client = redis.Redis.from_url(broker.env["ESF_BROKER_URL"])
        return [str(decode_kombu_payload(raw)[1]["id"]) for raw in client.lrange(queue, 0, -1)]
    with Connection(broker.env["ESF_BROKER_URL"]) as conn:
        channel = conn.channel()
        ids = []
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            ids.append(str(message.headers["id"]))
        channel.close()
        return ids


def raw_dlq(broker: Broker, queue: str) -> list[Any]:
    """The DLQ exactly as the broker holds it: Redis payload bytes; RabbitMQ (body, delivery count)."""
    if broker.kind == "redis":
        return list(redis.Redis.from_url(broker.env["ESF_BROKER_URL"]).lrange(f"{queue}.dlq", 0, -1))
    with Connection(broker.env["ESF_BROKER_URL"]) as conn:
        channel = conn.channel()
        out = []
        while (message := channel.basic_get(f"{queue}.dlq", no_ack=False)) is not None:
            out.append((message.body, (message.headers or {}).get("x-delivery-count", 0)))
        channel.close()
        return out


@pytest.fixture
def fnd(broker: Broker) -> Iterator[Foundation]:
    """A Foundation on an empty DLQ and an empty job queue (no worker consumes in this module)."""
    f = broker.foundation()
    f.jobs.dlq.declare_all()
    f.jobs.dlq.purge(broker.queue)
    if broker.kind == "redis":
        redis.Redis.from_url(broker.env["ESF_BROKER_URL"]).delete(broker.queue)
    else:
        with Connection(broker.env["ESF_BROKER_URL"]) as conn:
            f.celery.amqp.queues[broker.queue](conn.default_channel).declare()
            conn.default_channel.queue_purge(broker.queue)
    try:
        yield f
    finally:
        f.close()


def test_depth_and_health_count_entries_without_reading_or_moving_any(fnd: Foundation, broker: Broker) -> None:
    # Given three entries
    publish(fnd, [make_entry(broker.queue) for _ in range(3)])
    before = raw_dlq(broker, broker.queue) if broker.kind == "redis" else None
    # When depth and health are asked for several times
    for _ in range(3):
        assert fnd.jobs.dlq.depth(broker.queue) == {broker.queue: 3}
        report = fnd.health()["services"]["dlq"]
        assert report["depth"][broker.queue] == 3
    # Then no entry was fetched: same bytes on Redis, never delivered on RabbitMQ
    if broker.kind == "redis":
        assert raw_dlq(broker, broker.queue) == before
    else:
        assert [count for _, count in raw_dlq(broker, broker.queue)] == [0, 0, 0]


def test_pages_cover_every_entry_once_oldest_first_and_leave_the_queue_as_it_was(
    fnd: Foundation, broker: Broker
) -> None:
    # Given seven entries
    entries = publish(fnd, [make_entry(broker.queue) for _ in range(7)])
    before = raw_dlq(broker, broker.queue) if broker.kind == "redis" else None
    # When they are listed three at a time
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = fnd.jobs.dlq.list(broker.queue, limit=3, cursor=cursor)
        pages += 1
        seen.extend(e.id for e in page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Then three pages hold every entry once, in the order they were dead-lettered
    assert pages == 3
    assert seen == [e.id for e in entries]
    # And the queue still holds all of them, in place
    assert fnd.jobs.dlq.depth(broker.queue)[broker.queue] == 7
    if broker.kind == "redis":
        assert raw_dlq(broker, broker.queue) == before
    assert fnd.jobs.dlq.show(entries[4].job_id).id == entries[4].id
    assert [e.id for e in fnd.jobs.dlq.entries(broker.queue)] == [e.id for e in entries]


def test_bad_listing_and_purge_arguments_raise_validation_errors_and_remove_nothing(
    fnd: Foundation, broker: Broker
) -> None:
    # Given one entry
    publish(fnd, [make_entry(broker.queue)])
    # When the calls get bad arguments, Then each raises a specific error
    for bad in (0, -1, 10_001, True):
        with pytest.raises(ValidationError):
            fnd.jobs.dlq.list(broker.queue, limit=bad)
    for cursor in ("nonsense", f"{broker.queue}@-1", "other-queue@0"):
        with pytest.raises(ValidationError):
            fnd.jobs.dlq.list(broker.queue, cursor=cursor)
    with pytest.raises(UnknownQueue):
        fnd.jobs.dlq.list("no-such-queue")
    with pytest.raises(ValidationError):
        fnd.jobs.dlq.purge(broker.queue, older_than_s=-1)
    with pytest.raises(ValidationError):
        fnd.jobs.dlq.purge(broker.queue, batch_size=0)
    with pytest.raises(ValidationError):
        fnd.jobs.dlq.replay([])
    with pytest.raises(NotFound):
        fnd.jobs.dlq.replay(["no-such-entry"])
    # And nothing was removed or sent
    assert fnd.jobs.dlq.depth(broker.queue)[broker.queue] == 1
    assert queued_job_ids(broker, broker.queue) == []


def test_replay_all_sends_every_entry_once_in_batches_and_keeps_what_it_cannot_send(
    fnd: Foundation, broker: Broker
) -> None:
    # Given five entries and one undecodable message
    entries = publish(fnd, [make_entry(broker.queue) for _ in range(5)])
    garbage = publish(fnd, [make_entry(broker.queue, raw=True)])[0]
    progress: list[tuple[int, int]] = []
    # When every entry is replayed, two per batch
    sent = fnd.jobs.dlq.replay(queue=broker.queue, batch_size=2, progress=lambda r, n: progress.append((r, n)))
    # Then each job was sent once, with progress after every batch
    assert sorted(sent) == sorted(e.job_id for e in entries)
    assert sorted(queued_job_ids(broker, broker.queue)) == sorted(sent)
    assert sum(r for r, _ in progress) == 5 and sum(n for _, n in progress) == 6 and len(progress) >= 3
    # And only the undecodable message is left
    assert [e.id for e in fnd.jobs.dlq.entries(broker.queue)] == [garbage.id]


def test_purge_older_than_removes_only_the_old_entries(fnd: Foundation, broker: Broker) -> None:
    # Given three entries dead-lettered two hours ago and two just now
    old = publish(fnd, [make_entry(broker.queue, age_s=7200) for _ in range(3)])
    new = publish(fnd, [make_entry(broker.queue) for _ in range(2)])
    # When entries older than an hour are purged
    n = fnd.jobs.dlq.purge(broker.queue, older_than_s=3600, batch_size=2)
    # Then the old ones are gone and the new ones are left, in order
    assert n == len(old)
    assert [e.id for e in fnd.jobs.dlq.entries(broker.queue)] == [e.id for e in new]


def test_two_replays_racing_over_the_same_entries_send_each_exactly_once(fnd: Foundation, broker: Broker) -> None:
    # Given forty entries
    entries = publish(fnd, [make_entry(broker.queue) for _ in range(40)])
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def replay_all(i: int) -> None:
        other = broker.foundation()
        try:
            barrier.wait()
            results[i] = other.jobs.dlq.replay(queue=broker.queue, batch_size=5)
        finally:
            other.close()

    # When two processes' worth of replay-all run at once
    threads = [threading.Thread(target=replay_all, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Then every entry was sent by exactly one of them
    assert sorted(results[0] + results[1]) == sorted(e.job_id for e in entries)
    assert sorted(queued_job_ids(broker, broker.queue)) == sorted(e.job_id for e in entries)
    assert fnd.jobs.dlq.depth(broker.queue)[broker.queue] == 0


def test_a_purge_racing_a_replay_loses_no_entry_it_was_not_asked_to_purge(fnd: Foundation, broker: Broker) -> None:
    # Given thirty old entries and ten new ones
    old = publish(fnd, [make_entry(broker.queue, age_s=7200) for _ in range(30)])
    new = publish(fnd, [make_entry(broker.queue) for _ in range(10)])
    sent: list[str] = []
    purged: list[int] = []
    barrier = threading.Barrier(2)

    def replay() -> None:
        other = broker.foundation()
        try:
            barrier.wait()
            sent.extend(other.jobs.dlq.replay(queue=broker.queue, batch_size=3))
        finally:
            other.close()

    def purge() -> None:
        other = broker.foundation()
        try:
            barrier.wait()
            purged.append(other.jobs.dlq.purge(broker.queue, older_than_s=3600, batch_size=3))
        finally:
            other.close()

    # When a replay of everything and a purge of the old entries run at once
    threads = [threading.Thread(target=replay), threading.Thread(target=purge)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Then each entry was replayed, purged or left in place, exactly one of the three
    # (on RabbitMQ an entry the purge held while the replay passed is left for the next replay),
    # and no new entry was purged
    left = {e.job_id for e in fnd.jobs.dlq.entries(broker.queue)}
    assert len(sent) == len(set(sent)) and not (set(sent) & left)
    assert len(sent) + purged[0] + len(left) == len(old) + len(new)
    assert {e.job_id for e in new} <= set(sent) | left
    assert sorted(queued_job_ids(broker, broker.queue)) == sorted(sent)
    if broker.kind == "redis":
        assert not left  # a Redis replay claims entries one by one: none is hidden from it


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)  # only RabbitMQ dead-letters messages itself
def test_a_dead_letter_made_by_the_broker_reads_as_an_entry_with_its_last_attempt_time(
    fnd: Foundation, broker: Broker
) -> None:
    # Given a job message that a consumer rejects without requeueing (the quorum queue dead-letters it)
    handle = fnd.jobs.enqueue("t.add", 2, 3)
    before = time.time()
    with Connection(broker.env["ESF_BROKER_URL"]) as conn:
        channel = conn.channel()
        message = wait_for(lambda: channel.basic_get(broker.queue, no_ack=False), timeout=10, message="the job")
        channel.basic_reject(message.delivery_tag, requeue=False)
        channel.close()
    # When the DLQ is read
    entry = wait_for(lambda: next((e for e in fnd.jobs.dlq.entries(broker.queue) if e.job_id == handle.id), None),
                     timeout=30, message="the broker's dead letter")
    # Then it names the job, its arguments, the reason, and when its last attempt ended
    assert (entry.job, entry.args, entry.queue, entry.reason) == ("t.add", [2, 3], broker.queue, "rejected")
    assert entry.last_attempt_at is not None and before - 1 <= entry.last_attempt_at <= time.time() + 1
    assert entry.last_attempt_at == entry.dead_lettered_at


_KILLED_REPLAY = """
import os, signal, sys
import esf
from tests.jobs import apps

fnd = apps.build(esf.Settings.from_env())
point, entry_id = sys.argv[1], sys.argv[2]
real = fnd.jobs.dlq._resend

def resend(entry, args, kwargs, corrected):
    if point == "before_send":
        os.kill(os.getpid(), signal.SIGKILL)
    job_id = real(entry, args, kwargs, corrected)
    if point == "after_send":
        os.kill(os.getpid(), signal.SIGKILL)
    return job_id

fnd.jobs.dlq._resend = resend
fnd.jobs.dlq.replay([entry_id])
"""


@pytest.mark.parametrize("point", ["before_send", "after_send"])
def test_a_replay_killed_at_any_point_sends_its_entry_at_most_twice_and_never_zero_times(
    fnd: Foundation, broker: Broker, point: str
) -> None:
    # Given one entry, and a replay process that SIGKILLs itself before or after it sends the job
    entry = publish(fnd, [make_entry(broker.queue)])[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    env.update(broker.env)
    env.update({"ESF_JOBS_DLQ_CLAIM_TTL_S": "2", "PYTHONPATH": str(ROOT)})
    # When the replay is killed
    proc = subprocess.run([sys.executable, "-c", _KILLED_REPLAY, point, entry.id], env=env, cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    sent_by_killed = queued_job_ids(broker, broker.queue)
    assert sent_by_killed == ([entry.job_id] if point == "after_send" else [])

    # Then a later replay finds the entry again (once the dead replay's claim expired) and sends it
    def replay_again() -> list[str]:
        try:
            return fnd.jobs.dlq.replay([entry.id])
        except NotFound:
            return []

    assert wait_for(replay_again, timeout=30, interval=0.5, message="the entry to come back") == [entry.job_id]
    # And the job went out at most twice, never zero times, and left the DLQ
    total = queued_job_ids(broker, broker.queue)
    assert total == [entry.job_id] * (2 if point == "after_send" else 1)
    assert fnd.jobs.dlq.depth(broker.queue)[broker.queue] == 0


def _cli(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    env.update(broker.env)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "esf.cli", "--app", "tests.jobs.apps:make", "dlq", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_cli_pages_with_a_cursor_purges_older_than_and_replays_all_with_progress(
    fnd: Foundation, broker: Broker
) -> None:
    # Given two old entries and three new ones
    old = publish(fnd, [make_entry(broker.queue, age_s=7200) for _ in range(2)])
    new = publish(fnd, [make_entry(broker.queue) for _ in range(3)])
    # When the CLI lists them two at a time, following the printed cursor
    import json

    first = json.loads(_cli(broker, "list", "--queue", broker.queue, "--limit", "2", "--json").stdout)
    second = json.loads(_cli(broker, "list", "--queue", broker.queue, "--limit", "2", "--cursor",
                             first["next_cursor"], "--json").stdout)
    text = _cli(broker, "list", "--queue", broker.queue, "--limit", "2").stdout
    # Then the pages follow each other and the text output names the next page's command
    assert [e["id"] for e in first["entries"] + second["entries"]] == [e.id for e in (old + new)[:4]]
    assert f"--cursor {first['next_cursor']}" in text
    assert json.loads(_cli(broker, "depth", "--queue", broker.queue, "--json").stdout) == {broker.queue: 5}
    # When entries older than an hour are purged
    purged = _cli(broker, "purge", "--queue", broker.queue, "--older-than", "1h", "--batch-size", "1")
    # Then only the old ones go, with a progress line per batch
    assert "2 entries purged" in purged.stdout
    assert "purged 2 of 5 entries read" in purged.stderr
    # (RabbitMQ may give back in another order the entries an operation held and did not take)
    assert sorted(e.id for e in fnd.jobs.dlq.entries(broker.queue)) == sorted(e.id for e in new)
    # When every entry is replayed
    replayed = _cli(broker, "replay", "--all", "--queue", broker.queue, "--batch-size", "2")
    # Then each is sent once, with progress, and the DLQ is empty
    assert "3 job(s) replayed" in replayed.stdout and "replayed 3 of 3 entries read" in replayed.stderr
    assert sorted(queued_job_ids(broker, broker.queue)) == sorted(e.job_id for e in new)
    assert fnd.jobs.dlq.depth(broker.queue)[broker.queue] == 0
    # And a bad cursor is refused with a message, not a traceback
    bad = _cli(broker, "list", "--queue", broker.queue, "--cursor", "nonsense")
    assert bad.returncode != 0 and "invalid DLQ cursor" in bad.stderr and "Traceback" not in bad.stderr
