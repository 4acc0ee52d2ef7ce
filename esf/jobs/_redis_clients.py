"""One Redis client object per kombu channel, for every connection an ESF app opens.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it
sends outside the event loop (each publish, acknowledgement, reservation and
restore): ~57 µs here, most of it copying the response-callback table. That is
a tenth of a prefork worker's main process per job, and a tenth of a producer's
time per enqueue. A client object is thread-safe and borrows connections from
the channel's pool, so this channel keeps one per pool and hands it out again.

:class:`EsfConnection` is the connection class of an ESF app's Celery (its
``amqp.Connection``); its clones and the connections of its pools (Celery's
producer pool among them) are of the same kind, so the producer, the worker's
consumer and everything else the app opens use this channel. The transport,
its URL, its options and every other broker stay kombu's.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, reusing one synchronous client per connection pool."""

    _esf_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            # The channel was closed, or its connection collected after a connection error, and a
            # command of it still comes: the acknowledgement of a job that finished across the loss,
            # run by Celery's event loop after the reconnect. kombu builds a pool from the missing
            # connection and raises AttributeError, which stops the worker ("Unrecoverable error");
            # a connection error is logged by the acknowledgement instead, and the message stays in
            # ``unacked`` for the restore sweep.
            import redis

            raise redis.exceptions.ConnectionError("this channel's connection was closed")
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._esf_client
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self._esf_client = cached
        return cached[1]

    def close(self) -> None:
        """Close as kombu does; skip the restore when the connection was collected first.

        After a connection error, Celery's consumer (5.7) collects the broken connection, which
        lets the transport drop its client, and then closes it. kombu's close restores the
        unacknowledged messages through a new pool built from that client, and raises
        ``AttributeError``: not a connection error, so the worker stopped ("Unrecoverable error")
        instead of reconnecting. The messages stay in ``unacked`` and the restore sweep gives
        them back after the visibility timeout, as after any lost worker.
        """
        if self.connection is not None and self.connection.client is None:
            self.do_restore = False
        super().close()


def reuse_clients(transport: Any) -> Any:
    """Make ``transport`` (kombu's Redis transport, not yet connected) open :class:`Channel`s.

    Any other transport, a subclass of kombu's included, is returned untouched.
    """
    if type(transport) is kombu_redis.Transport and transport.Channel is kombu_redis.Channel:
        transport.Channel = Channel
    return transport


class EsfConnection(Connection):  # type: ignore[misc]
    """kombu's connection; on Redis its channels reuse their client objects."""

    def create_transport(self) -> Any:
        return reuse_clients(super().create_transport())

    def Pool(self, limit: int | None = None, **kwargs: Any) -> EsfConnectionPool:
        return EsfConnectionPool(self, limit=limit, **kwargs)


class EsfPooledConnection(PooledConnection, EsfConnection):  # type: ignore[misc]
    """A pool's connection: kombu's, with :class:`EsfConnection`'s transport."""


class EsfConnectionPool(ConnectionPool):  # type: ignore[misc]
    """kombu's connection pool (Celery's producer pool draws from it), opening :class:`EsfPooledConnection`s."""

    def new(self) -> EsfPooledConnection:
        return EsfPooledConnection(self, **dict(self.connection._info(resolve=False)))


class EsfAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper with :class:`EsfConnection` as its connection class."""

    Connection = EsfConnection
    BrokerConnection = EsfConnection
