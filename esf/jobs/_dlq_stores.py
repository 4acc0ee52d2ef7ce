"""Where dead letters are read and taken from: a Redis list, or a queue reached through kombu.

Both stores give the same guarantees to :class:`~esf.jobs._deadletter.DeadLetterQueues`:

* reading (``depth``, ``page``) never moves an entry for longer than one fetch;
* ``process`` takes each selected entry exclusively (two operations never both
  act on one entry), runs the action, and removes the entry only after the
  action returned; an operation that dies in between leaves the entry to be
  taken again (an action runs at most twice for one entry, never zero times).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._deadletter_entry import DeadLetter, entry_from_message, poison_entry

if TYPE_CHECKING:
    import redis
    from kombu import Connection, Message, Queue

#: Decides whether an operation takes an entry.
Select = Callable[[DeadLetter], bool]
#: Runs on an entry once it is taken, before the entry is removed (None: remove at once).
Act = Callable[[DeadLetter], None]
#: Called after each batch with (entries removed in the batch, entries read in the batch).
OnBatch = Callable[[int, int], None]


@dataclass(frozen=True)
class Pass:
    """What one ``process`` call did: entries read, and entries acted on and removed."""

    seen: int = 0
    removed: int = 0


class DeadLetterStore(Protocol):
    """The entries of dead-letter queues on one broker."""

    def depth(self, dlq: str, queue: str) -> int:
        """Entries on ``dlq`` (a cheap count: no entry is read)."""
        ...

    def page(self, dlq: str, queue: str, offset: int, limit: int) -> tuple[list[DeadLetter], bool]:
        """Up to ``limit`` entries from position ``offset`` (0: the oldest), and whether more follow."""
        ...

    def process(self, dlq: str, queue: str, select: Select, act: Act | None, *, batch_size: int,
                on_batch: OnBatch | None, done: Callable[[], bool]) -> Pass:
        """Take every selected entry exclusively, act on it, then remove it (see the module docstring)."""
        ...

    def recover(self, dlq: str) -> int:
        """Give back the entries held by operations that died; returns how many."""
        ...


def _stable_poison(raw: bytes, queue: str, exc: BaseException) -> DeadLetter:
    """An entry that could not be read, with an id that stays the same from one read to the next."""
    from dataclasses import replace

    entry = poison_entry(raw, None, None, queue, "undecodable", exc)
    return replace(entry, id="raw-" + hashlib.sha256(raw).hexdigest()[:20], job_id="?")


# -- Redis ------------------------------------------------------------------------------

#: Takes one entry (by its exact payload) into the operation's claim list and renews the claim.
#: KEYS[1] the DLQ list, KEYS[2] the claim list, KEYS[3] the claims sorted set;
#: ARGV[1] the payload, ARGV[2] the operation id, ARGV[3] the claim's deadline (epoch seconds).
_CLAIM_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""

#: Puts back at the oldest end of the DLQ every entry claimed by an operation whose claim expired.
#: KEYS[1] the claims sorted set, KEYS[2] the DLQ list; ARGV[1] now, ARGV[2] the claim lists' prefix.
_RECOVER_LUA = """
local ops = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = 0
for _, op in ipairs(ops) do
  local key = ARGV[2] .. op
  local v = redis.call('RPOP', key)
  while v do
    redis.call('RPUSH', KEYS[2], v)
    n = n + 1
    v = redis.call('RPOP', key)
  end
  redis.call('ZREM', KEYS[1], op)
end
return n
"""

#: Gives one claimed entry back to the DLQ (its action failed). KEYS[1] claim list, KEYS[2] DLQ; ARGV[1] payload.
_UNCLAIM_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return 1
"""

#: Ends an operation: drops its claim when its claim list is empty. KEYS[1] claim list, KEYS[2] claims; ARGV[1] op.
_RELEASE_LUA = """
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""


def decode_kombu_payload(raw: bytes) -> tuple[bytes, dict[str, Any], str | None]:
    """Body, headers and content type of a message as kombu's Redis transport stores it."""
    envelope = json.loads(raw)
    props = envelope.get("properties") or {}
    body = envelope.get("body")
    if props.get("body_encoding") == "base64":
        data = base64.b64decode(body or b"")
    else:
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    return data, dict(envelope.get("headers") or {}), envelope.get("content-type")


class RedisDeadLetterStore:
    """Dead letters kept by kombu's Redis transport: ``<queue>.dlq`` is a list, newest entry at the head.

    Reads are ``LLEN`` and ``LRANGE``. An operation claims an entry with a script that
    removes its exact payload from the DLQ and pushes it on the operation's claim list
    ``<dlq>.claimed.<op>`` (registered with a deadline in ``<dlq>.claims``); it removes
    the entry from its claim list once its action returned. Claims of an operation that
    died are put back on the DLQ by the next operation once their deadline has passed.

    Parameters:
        client: a Redis client on the broker's database.
        claim_ttl_s: seconds a claim stays valid without being renewed (each claim renews it).
    """

    def __init__(self, client: redis.Redis[bytes], claim_ttl_s: float) -> None:
        self._client = client
        self._claim_ttl_s = claim_ttl_s
        self._claim = client.register_script(_CLAIM_LUA)
        self._recover = client.register_script(_RECOVER_LUA)
        self._unclaim = client.register_script(_UNCLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _read(self, raw: bytes, queue: str) -> DeadLetter:
        try:
            body, headers, content_type = decode_kombu_payload(raw)
            return entry_from_message(body, headers, content_type, queue)
        except Exception as exc:  # a payload no reader understands is still shown, never dropped
            return _stable_poison(raw, queue, exc)

    def depth(self, dlq: str, queue: str) -> int:
        return int(self._client.llen(dlq))

    def page(self, dlq: str, queue: str, offset: int, limit: int) -> tuple[list[DeadLetter], bool]:
        # The oldest entry is at the tail: position p from the oldest is index -(p + 1).
        raws = self._client.lrange(dlq, -(offset + limit + 1), -(offset + 1))
        more = len(raws) > limit
        raws = raws[1:] if more else raws
        return [self._read(raw, queue) for raw in reversed(raws)], more

    def recover(self, dlq: str) -> int:
        return int(self._recover(keys=[f"{dlq}.claims", dlq], args=[time.time(), f"{dlq}.claimed."]))

    def process(self, dlq: str, queue: str, select: Select, act: Act | None, *, batch_size: int,
                on_batch: OnBatch | None, done: Callable[[], bool]) -> Pass:
        self.recover(dlq)
        op = uuid.uuid4().hex
        claims, claimed = f"{dlq}.claims", f"{dlq}.claimed.{op}"
        kept = seen = removed = 0  # kept: entries left in place, counted from the oldest end
        try:
            while not done():
                raws = self._client.lrange(dlq, -(kept + batch_size), -(kept + 1))
                if not raws:
                    break
                batch_removed = 0
                drop: list[bytes] = []  # act None: removed together, each by its exact payload
                for raw in reversed(raws):
                    seen += 1
                    entry = self._read(raw, queue)
                    if not select(entry):
                        kept += 1
                        continue
                    if act is None:
                        drop.append(raw)
                        continue
                    deadline = time.time() + self._claim_ttl_s
                    if not self._claim(keys=[dlq, claimed, claims], args=[raw, op, deadline]):
                        continue  # another operation took it first
                    try:
                        act(entry)
                    except BaseException:
                        self._unclaim(keys=[claimed, dlq], args=[raw])
                        raise
                    self._client.lrem(claimed, 1, raw)
                    batch_removed += 1
                    if done():
                        break
                if drop:
                    pipe = self._client.pipeline(transaction=False)
                    for raw in drop:
                        pipe.lrem(dlq, 1, raw)
                    batch_removed += sum(int(n) for n in pipe.execute())
                removed += batch_removed
                if on_batch is not None:
                    on_batch(batch_removed, len(raws))
        finally:
            self._release(keys=[claimed, claims], args=[op])
        return Pass(seen=seen, removed=removed)


# -- kombu (RabbitMQ, the embedded broker) ---------------------------------------------


class KombuDeadLetterStore:
    """Dead letters on a queue reached through kombu (RabbitMQ quorum queues, the embedded broker).

    The depth is the queue's ready-message count (a passive ``queue.declare``). A page is
    one fetch: unacknowledged ``basic.get`` up to the end of the page, then the channel is
    closed, which returns every message in its order. An operation holds the messages it
    reads unacknowledged until it ends, so no other operation can take them, and
    acknowledges an entry only once its action returned; a connection that drops returns
    the entry to the queue.

    Parameters:
        connect: returns a new kombu ``Connection`` to the broker.
        declare: the kombu ``Queue`` of a DLQ name.
    """

    def __init__(self, connect: Callable[[], Connection], declare: Callable[[str], Queue]) -> None:
        self._connect = connect
        self._declare = declare

    def depth(self, dlq: str, queue: str) -> int:
        conn = self._connect()
        try:
            with conn.channel() as channel:
                try:
                    return int(self._declare(dlq)(channel).queue_declare(passive=True).message_count)
                except conn.channel_errors:
                    return 0  # not declared yet: no entry
        finally:
            conn.release()

    def _get(self, bound: Any) -> Message | None:
        return bound.get(no_ack=False, accept=["json", "application/json"])  # type: ignore[no-any-return]

    def page(self, dlq: str, queue: str, offset: int, limit: int) -> tuple[list[DeadLetter], bool]:
        conn = self._connect()
        try:
            channel = conn.channel()
            try:
                bound = self._declare(dlq)(channel)
                bound.declare()
                out: list[DeadLetter] = []
                for position in range(offset + limit + 1):
                    message = self._get(bound)
                    if message is None:
                        return out, False
                    if position == offset + limit:
                        return out, True
                    if position >= offset:
                        out.append(self._read(message, queue))
                return out, False
            finally:
                channel.close()  # returns every message fetched
        finally:
            conn.release()

    def _read(self, message: Message, queue: str) -> DeadLetter:
        raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            return entry_from_message(message.body, message.headers, message.content_type, queue)
        except Exception as exc:
            return _stable_poison(raw, queue, exc)

    def recover(self, dlq: str) -> int:
        return 0  # the broker returns the messages of a closed channel by itself

    def process(self, dlq: str, queue: str, select: Select, act: Act | None, *, batch_size: int,
                on_batch: OnBatch | None, done: Callable[[], bool]) -> Pass:
        conn = self._connect()
        seen = removed = batch_seen = batch_removed = 0
        try:
            channel = conn.channel()
            try:
                bound = self._declare(dlq)(channel)
                bound.declare()
                while not done():
                    message = self._get(bound)
                    if message is None:
                        break
                    seen += 1
                    batch_seen += 1
                    entry = self._read(message, queue)
                    if select(entry):
                        if act is not None:
                            act(entry)
                        message.ack()
                        batch_removed += 1
                    if batch_seen == batch_size:
                        removed += batch_removed
                        if on_batch is not None:
                            on_batch(batch_removed, batch_seen)
                        batch_seen = batch_removed = 0
                removed += batch_removed
                if on_batch is not None and batch_seen:
                    on_batch(batch_removed, batch_seen)
            finally:
                channel.close()  # returns the messages not acknowledged
        finally:
            conn.release()
        return Pass(seen=seen, removed=removed)
