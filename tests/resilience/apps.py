"""The app of the resilience tests' worker subprocesses.

``charge(order)`` calls a "payments API" through ``fnd.breaker("payments_api")``:
the API fails while the Redis key ``test:api:down`` exists (the test flips it).
Every call that reached the API is counted in ``test:api:calls:<pid>``, and every
completed charge is pushed to ``test:done``; every start of a charge is counted in
``test:api:started:<pid>``. ``opens_mid_flight`` meets its breaker opened while it runs.
"""

from __future__ import annotations

import os

import redis

from esf import Event, Foundation, Settings
from esf.resilience import RedisSharedState


class PaymentsDown(Exception):
    """The downstream refused the call."""


def make() -> Foundation:
    fnd = Foundation(Settings.from_env())
    url = fnd.settings.effective_redis_url
    assert url is not None
    client: redis.Redis[bytes] = redis.Redis.from_url(url)

    @fnd.job(name="tests.resilience.charge", uses=["payments_api"], retries=3, backoff=0.2, max_backoff=0.5)
    def charge(order: int) -> None:
        client.incr(f"test:api:started:{os.getpid()}")
        with fnd.breaker("payments_api"):
            client.incr(f"test:api:calls:{os.getpid()}")
            if client.exists("test:api:down"):
                raise PaymentsDown("payments API refused the call")
        client.rpush("test:done", order)

    @fnd.job(name="tests.resilience.opens_mid_flight", uses=["ledger_api"], retries=0)
    def opens_mid_flight(order: int) -> None:
        # The first execution finds the breaker opened (by another process) after it started.
        if client.set("test:ledger:opened", 1, nx=True):
            RedisSharedState(lambda: client, fnd.settings.resilience.breaker_key_prefix).open("ledger_api", 1.0)
        with fnd.breaker("ledger_api"):
            client.rpush("test:ledger:done", order)

    @fnd.job(name="tests.resilience.append")
    def append(order: int) -> None:
        # Synchronous append: written, or spooled on this node while the database is unreachable.
        fnd.events.append(Event("test.order", {"order": order}, stream_id=f"order-{order}"))
        client.rpush("test:appended", order)

    return fnd


def embedded() -> Foundation:
    """An embedded Foundation with one named breaker, opened (``esf health`` tests)."""
    fnd = Foundation(Settings.from_env())
    breaker = fnd.breakers.get("payments_api")
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    return fnd
