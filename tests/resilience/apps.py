"""The app of the resilience tests' worker subprocesses.

``charge(order)`` calls a "payments API" through ``fnd.breaker("payments_api")``:
the API fails while the Redis key ``test:api:down`` exists (the test flips it).
Every call that reached the API is counted in ``test:api:calls:<pid>``, and every
completed charge is pushed to ``test:done``.
"""

from __future__ import annotations

import os

import redis

from esf import Foundation, Settings


class PaymentsDown(Exception):
    """The downstream refused the call."""


def make() -> Foundation:
    fnd = Foundation(Settings.from_env())
    url = fnd.settings.effective_redis_url
    assert url is not None
    client: redis.Redis[bytes] = redis.Redis.from_url(url)

    @fnd.job(name="tests.resilience.charge", uses=["payments_api"], retries=3, backoff=0.2, max_backoff=0.5)
    def charge(order: int) -> None:
        with fnd.breaker("payments_api"):
            client.incr(f"test:api:calls:{os.getpid()}")
            if client.exists("test:api:down"):
                raise PaymentsDown("payments API refused the call")
        client.rpush("test:done", order)

    @fnd.job(name="tests.resilience.note")
    def note(order: int) -> None:
        client.rpush("test:notes", order)

    return fnd
