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
    assert len(missing) > 20, "the kill came too late to test anything"
    # Then a new worker delivers everything that was missing
    subs_env.worker()
    wait_for(lambda: set(subs_env.seen()) >= set(expected), timeout=90, message="delivery after the kill")
    seen = subs_env.seen()
    assert set(seen) == set(expected), "only matching events are delivered"
    # And only the batches in flight at the kill were delivered twice (10 events x 8 batches at most)
    assert len(seen) - len(set(seen)) <= 10 * 8
    wait_for(lambda: fnd.subscriptions.status("orders").checkpoint == fnd.events.head(), timeout=30,
             message="the checkpoint reaching the head")
    status = fnd.subscriptions.status("orders")
    assert (status.queued, status.in_flight, status.dead, status.lag_events) == (0, 0, 0, 0)
