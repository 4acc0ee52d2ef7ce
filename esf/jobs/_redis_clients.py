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

The channel also takes each job atomically (esf/jobs/_redis_take.py): the Lua
script that pops it records it unacknowledged in the same step, where kombu's
``BRPOP`` consumer records it in a second command, and an idle consumer waits
for a wake-up token instead of the job itself.
"""

from __future__ import annotations

from time import monotonic, time
from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from ._redis_take import WAKE_SUFFIX, WAKE_TTL_MS, Take

_Empty = kombu_redis.Empty
#: The commands kombu's prefixing client prefixes by itself; the channel prefixes the others' keys.
_PREFIXED_BY_CLIENT = frozenset(kombu_redis.GlobalKeyPrefixMixin.PREFIXED_SIMPLE_COMMANDS)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's Redis acknowledgement emulation; a message the take recorded is not written again."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        channel = self.channel
        if channel._esf_recorded is not None and channel._esf_recorded == delivery_tag:
            channel._esf_recorded = None
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, reusing one synchronous client per connection pool and taking jobs atomically."""

    QoS = QoS
    _esf_client: tuple[Any, Any] | None = None
    #: The delivery tag the take just recorded in ``unacked`` (QoS.append skips it).
    _esf_recorded: Any = None
    #: Whether the next poll takes at once (the last take found a message) instead of waiting for a token.
    _esf_take_next = True
    #: The queues of the pending poll, whether it is a wait for a token, and the keys and arguments of its take.
    _esf_polled: list[str] | None = None
    _esf_waiting = False
    _esf_sent: tuple[list[str], list[Any]] = ([], [])
    #: While ``basic_get`` runs: whether the message it gets is recorded (``not no_ack``).
    _esf_get_records: bool | None = None
    _esf_take = Take()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._esf_no_ack: dict[str, bool] = {}
        super().__init__(*args, **kwargs)

    # -- keys --------------------------------------------------------------------------------------------

    def wake_key(self, queue: str) -> str:
        """The wake list of ``queue`` (without the global key prefix)."""
        return f"{queue}{self.sep}{WAKE_SUFFIX}"

    def _raw(self, key: str) -> str:
        """``key`` as sent on a connection directly, past kombu's prefixing client."""
        return str(self.global_keyprefix) + key

    def _for(self, command: str, key: str) -> str:
        """``key`` as given to kombu's client for ``command``: the client prefixes some commands only."""
        return key if command in _PREFIXED_BY_CLIENT else self._raw(key)

    def _take_keys(self, queues: list[str]) -> tuple[list[str], list[Any]]:
        keys = [self._raw(self.unacked_key), self._raw(self.unacked_index_key)]
        keys += [self._raw(self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
        keys += [self._raw(self.wake_key(queue)) for queue in queues]
        records = self._get_records_for(queues)
        args: list[Any] = [repr(time()), len(queues), len(self.priority_steps), WAKE_TTL_MS, *records]
        return keys, args

    def _get_records_for(self, queues: list[str]) -> list[str]:
        if self._esf_get_records is not None:
            return ["1" if self._esf_get_records else "0"] * len(queues)
        return ["0" if self._esf_no_ack.get(queue, False) else "1" for queue in queues]

    @property
    def _esf_atomic(self) -> bool:
        return bool(self.ack_emulation)

    # -- publishing: the message, then a wake-up token ------------------------------------------------------

    def _wake_commands(self, queue: str) -> list[tuple[str, tuple[Any, ...]]]:
        wake = self.wake_key(queue)
        return [("lpush", (self._for("LPUSH", wake), "1")), ("ltrim", (self._for("LTRIM", wake), 0, 0)),
                ("pexpire", (self._for("PEXPIRE", wake), WAKE_TTL_MS))]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Deliver ``message`` as kombu does, and push a wake-up token on its queue's wake list."""
        pri = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, pri)
        commands: list[tuple[str, tuple[Any, ...]]] = [("lpush", (key, dumps(message)))]
        if self._expires and queue in self._expires:
            commands += [("pexpire", (self._q_for_pri(queue, p), self._expires[queue])) for p in self.priority_steps]
        commands += self._wake_commands(queue)
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            for name, args in commands:
                publish_batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        """Put a message back as kombu does, and wake its queues' consumers."""
        try:
            try:
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            except KeyError:
                pass
            for queue in self._lookup(exchange, routing_key):
                pri = self._get_message_priority(payload, reverse=False)
                (pipe.lpush if leftmost else pipe.rpush)(self._q_for_pri(queue, pri), dumps(payload))
                for name, args in self._wake_commands(queue):
                    getattr(pipe, name)(*args)
        except self.connection_errors:
            raise  # abort the transaction: it would remove the message from ``unacked`` without requeueing it
        except Exception:
            kombu_redis.crit("Could not restore message: %r", payload, exc_info=True)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.delete(self.wake_key(queue))

    # -- consuming: take atomically, wait on wake lists -------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs["no_ack"] if "no_ack" in kwargs else (args[0] if args else False)
        self._esf_no_ack[queue] = bool(no_ack)
        return super().basic_consume(queue, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        self._esf_get_records = not no_ack
        try:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        finally:
            self._esf_get_records = None
            self._esf_recorded = None

    def _get(self, queue: str) -> Any:
        if not self._esf_atomic or self._esf_get_records is None:
            return super()._get(queue)
        keys, args = self._take_keys([queue])
        with self.conn_or_acquire() as client:
            reply = self._esf_take.call(client, keys, args)
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise _Empty()
        message = loads(bytes_to_str(reply[1]))
        if self._esf_get_records:
            self._esf_recorded = _tag(message)
        return message

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._esf_atomic:
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        connection = self.client.connection
        if self._esf_take_next and not self._closing:
            self._esf_sent = self._take_keys(queues)
            command = self._esf_take.command(*self._esf_sent)
            self._esf_waiting = False
        else:
            command = ["BRPOP", *(self._raw(self.wake_key(queue)) for queue in queues), timeout or 0]
            self._esf_waiting = True
        self._esf_polled = list(queues)
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_command(*command)
        return None

    def _brpop_read(self, **options: Any) -> Any:
        if not self._esf_atomic:
            return super()._brpop_read(**options)
        client = self.client
        connection = client.connection
        queues = self._esf_polled or []
        try:
            try:
                if self._esf_waiting:
                    # A token, or the timeout: either way look, unless the channel is closing.
                    client.parse_response(connection, "BRPOP", **options)
                    if self._closing or not queues:
                        raise _Empty()
                    keys, args = self._esf_sent = self._take_keys(queues)
                    reply = self._esf_take.run(client, connection, keys, args)
                else:
                    keys, args = self._esf_sent
                    reply = self._esf_take.read(client, connection, keys, args, **options)
            except self.connection_errors:
                # Disconnect, so that the next poll reconnects. A take the server ran is in ``unacked``.
                self._esf_take_next = True
                connection.disconnect()
                raise
            if not reply:
                self._esf_take_next = False
                raise _Empty()
            self._esf_take_next = True
            position, item = reply
            queue = queues[(int(position) - 1) % len(queues)]
            self._queue_cycle.rotate(queue)
            message = loads(bytes_to_str(item))
            records = args[4 + (int(position) - 1) % len(queues)] == "1"
            self._esf_recorded = _tag(message) if records else None
            try:
                self.connection._deliver(message, queue)
            finally:
                self._esf_recorded = None
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

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


def _tag(message: Any) -> Any:
    """The delivery tag of a message as the take script reads it, or None."""
    try:
        return message["properties"]["delivery_tag"]
    except (KeyError, TypeError):
        return None
