"""Leases on the jobs a live worker holds, for the Redis broker.

kombu's Redis transport re-delivers any unacknowledged message older than the
visibility timeout, even while a live worker is still running it (celery#5306,
kombu#337). A worker keeps a lease on every job it has reserved, is running,
or holds for a later ETA: every ``visibility_timeout / 4`` seconds it moves
those messages' scores in ``unacked_index`` to now. A job therefore runs once
however long it takes, and the visibility timeout only bounds how long the jobs
of a worker that died stay invisible: they are delivered again within
``visibility_timeout + restore_interval`` seconds.

The lease reads what the worker holds from Celery's worker state
(``celery.worker.state.requests`` and ``scheduled_requests``, the latter new in
Celery 5.7) and writes kombu's Redis bookkeeping (``unacked_index``, the
priority-step queue names). Those are internals, not APIs:
:func:`esf.jobs._checks.check_lease_internals` verifies them once, when the worker starts, and
refuses to start a worker on a Celery or kombu that lacks one, instead of
running without the lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from esf.jobs._checks import (
    PRIORITY_SEP,
    PRIORITY_STEPS,
    UNACKED_INDEX_KEY,
    check_lease_internals,
    lease_internals_problems,
)

__all__ = [
    "PRIORITY_SEP",
    "PRIORITY_STEPS",
    "UNACKED_INDEX_KEY",
    "LeaseKeeper",
    "check_lease_internals",
    "held_delivery_tags",
    "lease_internals_problems",
]

log = logging.getLogger("esf.workers")

def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has reserved, is running, or scheduled."""
    from celery.worker import state

    tags: list[str] = []
    requests: list[Any] = list(state.requests.values()) + list(state.scheduled_requests)
    for req in requests:
        tag = getattr(req.message, "delivery_tag", None)
        if tag is not None:
            tags.append(str(tag))
    return tags


class LeaseKeeper:
    """A daemon thread refreshing the leases of this worker's jobs, and watching its consumer.

    The watch: Celery's consumer can reconnect to Redis after an outage and then
    never fetch again (celery#8082, #8384, #10205). When this worker holds no job
    while one of its queues has had jobs waiting for ``stall_after_s`` seconds,
    the consumer is stalled: the worker is restarted in place (Celery's SIGHUP
    restart: a warm shutdown, then the same command again).

    Raises:
        MissingDependency: the installed Celery or kombu lacks an internal the
            lease relies on (see :func:`check_lease_internals`).
    """

    def __init__(self, redis_url: str, visibility_timeout_s: float, key: str = UNACKED_INDEX_KEY,
                 queues: tuple[str, ...] = (), stall_after_s: float = 30.0,
                 on_stall: Callable[[], None] | None = None) -> None:
        import redis

        check_lease_internals()

        self._client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._interval = max(0.5, min(visibility_timeout_s / 4, stall_after_s / 3))
        self._key = key
        self._queues = queues
        self._stall_after_s = stall_after_s
        self._on_stall = on_stall
        self._idle_with_work_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="esf-lease", daemon=True)
        #: Number of refresh rounds done, and of rounds that failed (for health and tests).
        self.rounds = 0
        self.failed_rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def refresh(self) -> int:
        """Move the ``unacked_index`` score of every delivery this worker holds to now; returns how many
        deliveries were held. A delivery missing from the index (already acknowledged) is not added."""
        tags = held_delivery_tags()
        if not tags:
            return 0
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for tag in tags:
            pipe.zadd(self._key, {tag: now}, xx=True)
        pipe.execute()
        return len(tags)

    def waiting(self) -> int:
        """Jobs waiting in this worker's queues (every priority step)."""
        if not self._queues:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for q in self._queues:
            for step in PRIORITY_STEPS:
                pipe.llen(q if step == 0 else f"{q}{PRIORITY_SEP}{step}")
        return sum(int(n) for n in pipe.execute())

    def check_stall(self, now: float | None = None) -> bool:
        """True (and ``on_stall`` called once) when the consumer looks stalled; see the class docstring."""
        now = time.monotonic() if now is None else now
        if held_delivery_tags() or not self.waiting():
            self._idle_with_work_since = None
            return False
        if self._idle_with_work_since is None:
            self._idle_with_work_since = now
            return False
        if now - self._idle_with_work_since < self._stall_after_s:
            return False
        log.error("the worker holds no job while %d wait in its queues since %.0f s: its consumer is stalled "
                  "(celery#8082); restarting the worker", self.waiting(), now - self._idle_with_work_since)
        self._idle_with_work_since = None
        if self._on_stall is not None:
            self._on_stall()
        return True

    def _loop(self) -> None:
        failing: type[BaseException] | None = None  # the kind of error logged, until a round succeeds
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
                self.check_stall()
                self.rounds += 1
            except Exception as exc:  # the broker may be restarting: keep trying, and say so once per kind
                self.failed_rounds += 1
                if type(exc) is not failing:
                    log.warning("could not refresh job leases: %s: %s; retrying every %.1f s",
                                type(exc).__name__, exc, self._interval)
                failing = type(exc)
            else:
                if failing is not None:
                    log.warning("job leases refreshed again after %s", failing.__name__)
                failing = None
