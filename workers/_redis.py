"""One Redis client object per channel for the worker's consumer connection.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it
sends outside the event loop (each acknowledgement, each reservation, each
restore): ~57 µs here, most of it copying the response-callback table, about a
tenth of a prefork worker's main process per job. A client object is
thread-safe and borrows connections from the channel's pool, so this channel
keeps one per pool and hands it out again. Only the consuming connection of
ESF's worker uses it; the transport, its URL and everything else stay kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, reusing one synchronous client per connection pool."""

    _esf_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._esf_client
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self._esf_client = cached
        return cached[1]


def reuse_clients(connection: Any) -> None:
    """Make ``connection``'s Redis transport (not yet connected) open :class:`Channel`s."""
    transport = connection.transport
    if type(transport) is kombu_redis.Transport and transport.Channel is kombu_redis.Channel:
        transport.Channel = Channel
