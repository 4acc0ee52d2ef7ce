"""Leases on the jobs a live worker holds, for the Redis broker.

kombu's Redis transport re-delivers any unacknowledged message older than the
visibility timeout, even while a live worker is still running it (celery#5306,
kombu#337). A worker keeps a lease on every job it has reserved, is running,
or holds for a later ETA: every ``visibility_timeout / 4`` seconds it moves
those messages' scores in ``unacked_index`` to now. A job therefore runs once
however long it takes, and the visibility timeout only bounds how long the jobs
of a worker that died stay invisible: they are delivered again within
``visibility_timeout + restore_interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("esf.workers")

#: kombu's default key of the sorted set of unacknowledged deliveries.
UNACKED_INDEX_KEY = "unacked_index"


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has reserved, is running, or scheduled."""
    from celery.worker import state

    tags: list[str] = []
    requests: list[Any] = list(state.requests.values()) + list(state.scheduled_requests)
    for req in requests:
        message = getattr(req, "_message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.append(str(tag))
    return tags


class LeaseKeeper:
    """A daemon thread refreshing the leases of this worker's jobs."""

    def __init__(self, redis_url: str, visibility_timeout_s: float, key: str = UNACKED_INDEX_KEY) -> None:
        import redis

        self._client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._interval = max(0.5, visibility_timeout_s / 4)
        self._key = key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="esf-lease", daemon=True)
        #: Number of refresh rounds done (for health and tests).
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def refresh(self) -> int:
        tags = held_delivery_tags()
        if not tags:
            return 0
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for tag in tags:
            pipe.zadd(self._key, {tag: now}, xx=True)
        pipe.execute()
        return len(tags)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
                self.rounds += 1
            except Exception as exc:  # the broker may be restarting: keep trying
                log.warning("could not refresh job leases: %s", exc)
