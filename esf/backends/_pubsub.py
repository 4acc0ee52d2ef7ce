"""The subscriber loop of a Redis pub/sub channel that resubscribes with backoff (the config store's version
notices, the cache tier's invalidations)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    import logging

    import redis

__all__ = ["listen"]


def listen(client: redis.Redis[bytes], channel: str, on_message: Callable[[Any], None], stop: threading.Event, *,
           log: logging.Logger, what: str, first_delay_s: float, max_delay_s: float,
           tick: Callable[[], None] | None = None) -> None:
    """Subscribe to ``channel`` and hand every message's data to ``on_message`` until ``stop`` is set.

    After each (re)subscription ``on_message(None)`` runs first: messages published while the loop was away
    are lost, so the receiver resynchronises. A lost connection is retried after ``first_delay_s``, doubling
    up to ``max_delay_s``. ``tick`` (optional) runs at least every 0.25 s, and once before each retry.
    An exception of ``on_message`` is logged on ``log`` as ``"<what> callback failed"`` and the loop goes on.
    """
    delay = first_delay_s
    while not stop.is_set():
        pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel)
            delay = first_delay_s
            _call(on_message, None, log, what)
            while not stop.is_set():
                if tick is not None:
                    tick()
                message = pubsub.get_message(timeout=0.25)
                if message is None or message.get("type") != "message":
                    continue
                _call(on_message, message["data"], log, what)
        except (RedisError, OSError, ValueError) as exc:
            if stop.is_set():
                break
            log.debug("%s pub/sub lost (%s); reconnecting in %.2fs", what, exc, delay)
            if tick is not None:
                tick()
            stop.wait(delay)
            delay = min(delay * 2, max_delay_s)
        finally:
            try:
                pubsub.close()
            except (RedisError, OSError):
                pass


def _call(on_message: Callable[[Any], None], data: Any, log: logging.Logger, what: str) -> None:
    try:
        on_message(data)
    except Exception:
        log.exception("%s callback failed", what)
