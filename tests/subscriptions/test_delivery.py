"""Subscriptions deliver every matching event at least once, from a durable checkpoint, to worker jobs."""

from __future__ import annotations

import random

import pytest

from esf import Event, Q
from tests.jobs.harness import wait_for

from .conftest import Env

ORDERS = Q.type("order.paid") & (Q.data("total") > 100)


def append_orders(fnd, n: int, *, streams: int = 6, seed: int = 1, **data: object) -> list[int]:
    """Append ``n`` events of mixed types; returns the positions the ``orders`` subscription must see."""
    rng = random.Random(seed)
    batch = []
    for i in range(n):
        kind = rng.choice(["order.paid", "order.paid", "order.created"])
        batch.append(Event(kind, {"order": i, "total": rng.randint(0, 200), **data},
                           stream_id=f"order-{rng.randrange(streams)}"))
    stored = fnd.events.append(batch)
    return [e.position for e in stored if ORDERS.matches(e)]


@pytest.mark.slow
def test_a_subscription_catches_up_then_follows_live_events_and_misses_none_when_its_worker_is_sigkilled(
        subs_env: Env) -> None:
    # Given events stored before any worker runs, half of them matching the filter
    fnd = subs_env.foundation()
    expected = append_orders(fnd, 120, seed=1)
    # When a worker starts, it catches up from the beginning
    worker = subs_env.worker()
    wait_for(lambda: set(subs_env.seen()) >= set(expected), timeout=60, message="catch-up")
    # And new events with slow handlers are appended, and the worker is SIGKILLed with batches in flight
    caught_up = len(subs_env.seen())
    live = append_orders(fnd, 120, seed=2, sleep=0.2)
    expected += live
    wait_for(lambda: len(subs_env.seen()) >= caught_up + 4, timeout=60, message="live delivery under way")
    worker.kill()
    missing = set(expected) - set(subs_env.seen())
    assert len(missing) > 8, "the kill came too late to test anything"
    # Then a new worker delivers everything that was missing
    subs_env.worker()
    wait_for(lambda: set(subs_env.seen()) >= set(expected), timeout=90, message="delivery after the kill")
    seen = subs_env.seen()
    assert set(seen) == set(expected), "only matching events are delivered"
    # And only the batches in flight at the kill were delivered twice (10 events x 8 batches at most)
    assert len(seen) - len(set(seen)) <= 10 * 8
    # And the subscription settles with nothing queued, in flight or dead, and no lag (the job history keeps
    # appending events the filter skips, so the head moves on while this is read)
    def settled() -> bool:
        status = fnd.subscriptions.status("orders")
        return (status.queued, status.in_flight, status.dead, status.lag_events) == (0, 0, 0, 0)

    wait_for(settled, timeout=30, message="the subscription settling at the head")


def test_new_events_wake_the_dispatcher_without_waiting_for_its_poll(subs_env: Env) -> None:
    # Given a worker whose dispatcher polls only once a minute
    fnd = subs_env.foundation()
    subs_env.worker(ESF_SUBSCRIPTIONS_POLL_INTERVAL_S="60")
    first = append_orders(fnd, 20, seed=3)
    wait_for(lambda: set(subs_env.seen()) >= set(first), timeout=30, message="the first events")
    # When more events are appended
    more = append_orders(fnd, 20, seed=4)
    # Then the NOTIFY of their commit wakes it well before the next poll
    wait_for(lambda: set(subs_env.seen()) >= set(more), timeout=20, message="delivery on a wake-up")


def test_events_whose_wake_up_notifications_are_lost_are_still_delivered(subs_env: Env) -> None:
    # Given a worker whose dispatcher polls every second, and is caught up
    fnd = subs_env.foundation()
    subs_env.worker(ESF_SUBSCRIPTIONS_POLL_INTERVAL_S="1")
    first = append_orders(fnd, 10, seed=5)
    wait_for(lambda: set(subs_env.seen()) >= set(first), timeout=30, message="the first events")
    # When every notification is dropped on purpose (the triggers that send them are gone)
    wait_for(lambda: fnd.subscriptions.status("orders").checkpoint == fnd.events.head(), timeout=30,
             message="the last completion")
    subs_env.sql("DROP TRIGGER esf_event_head_notify ON esf_event_head")
    subs_env.sql("DROP TRIGGER esf_subscription_batch_done ON esf_subscription_batches")
    canary = append_orders(fnd, 10, seed=8)  # may still ride on a wake-up sent before the drop
    wait_for(lambda: set(subs_env.seen()) >= set(canary), timeout=30, message="the canary events")
    more = append_orders(fnd, 30, seed=6)
    # Then the checkpoint, not the notification, decides: every event is delivered by the poll
    wait_for(lambda: set(subs_env.seen()) >= set(more), timeout=30, message="delivery without wake-ups")
    # When its listening connection is killed as well, and more events are appended
    subs_env.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'esf-subscriptions' AND datname = current_database()")
    last = append_orders(fnd, 30, seed=7)
    # Then they are delivered too, and nothing else
    wait_for(lambda: set(subs_env.seen()) >= set(last), timeout=30, message="delivery without a listener")
    assert sorted(subs_env.seen()) == sorted(first + canary + more + last)


@pytest.mark.slow
def test_events_of_one_stream_are_handled_in_order_one_at_a_time_while_streams_run_in_parallel(
        subs_env: Env) -> None:
    # Given two workers of two processes each and batches of 2 events
    fnd = subs_env.foundation()
    extra = {"ESF_TEST_SUBS_BATCH": "2"}
    subs_env.worker(**extra)
    subs_env.worker(**extra)
    # When events of 8 streams are appended, interleaved, with handlers of varying speed
    rng = random.Random(11)
    expected = []
    for _ in range(3):
        batch = [Event("order.paid", {"total": 150, "sleep": rng.choice([0, 0, 0.02, 0.05])},
                       stream_id=f"order-{rng.randrange(8)}") for _ in range(50)]
        expected += [e.position for e in fnd.events.append(batch)]
    wait_for(lambda: set(subs_env.seen()) >= set(expected), timeout=90, message="delivery")
    # Then each stream saw its events exactly in position order
    by_stream: dict[str, list[int]] = {}
    for e in fnd.events.query(ORDERS):
        by_stream.setdefault(e.stream_id, []).append(e.position)
    for stream, positions in by_stream.items():
        assert subs_env.key(stream) == positions, stream
    # And the handling interleaved streams (they were not serialised into one order)
    assert subs_env.seen() != sorted(subs_env.seen())


def test_a_subscription_without_partitions_handles_every_event_in_one_strict_order(subs_env: Env) -> None:
    # Given a subscription with partition_by=None and two workers
    fnd = subs_env.foundation()
    extra = {"ESF_TEST_SUBS_PARTITION": "none", "ESF_TEST_SUBS_BATCH": "2"}
    subs_env.worker(**extra)
    subs_env.worker(**extra)
    # When events of many streams are appended
    expected = append_orders(fnd, 60, streams=8, seed=20)
    # Then they are handled exactly in position order
    wait_for(lambda: set(subs_env.seen()) >= set(expected), timeout=60, message="delivery")
    assert subs_env.seen() == expected
