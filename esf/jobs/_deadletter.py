"""Dead-letter queues: every routed queue ``Q`` has ``Q.dlq``.

An entry is a JSON message on ``Q.dlq`` holding the job and its failure.
ESF publishes entries itself when a job exhausts its retries, raises a
non-retryable error, exceeds its time limit, or arrives as a message that
cannot be decoded or names an unknown job. On RabbitMQ the queues also carry
the broker's own dead-lettering (``x-dead-letter-exchange`` and a quorum
``x-delivery-limit``): a message the broker dead-letters arrives as the raw
Celery message with ``x-death`` headers, and is read as an entry all the same.

Reading never moves an entry (see ``_dlq_stores``): listing is paged with an
opaque cursor, the depth is a count the broker keeps. Replay and purge take
each entry exclusively and remove it only once its successor is durable.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, UnknownQueue, ValidationError
from ._deadletter_entry import (
    DLQ_SUFFIX,
    H_DLQ,
    DeadLetter,
    dlq_name,
    entry_from_message,
    poison_entry,
)

if TYPE_CHECKING:
    from kombu import Connection, Queue

    from ._dlq_stores import DeadLetterStore, OnBatch

__all__ = [
    "DLQ_SUFFIX",
    "H_DLQ",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterQueues",
    "dlq_name",
    "entry_from_message",
    "poison_entry",
]

#: Entries of one page when no limit is given.
DEFAULT_PAGE_SIZE = 100
#: Largest page (``limit``) one call returns.
MAX_PAGE_SIZE = 10_000
#: Entries replay and purge take per batch (progress is reported after each).
DEFAULT_BATCH_SIZE = 100


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of entries, oldest first, and the cursor of the next page (None: this was the last).

    Iterating a page iterates its entries.
    """

    entries: tuple[DeadLetter, ...]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class DeadLetterQueues:
    """List, inspect, replay and purge the dead-letter queues of one broker.

    Parameters:
        connect: returns a new kombu ``Connection`` to the broker.
        queues: the routed queues (each has ``<queue>.dlq``).
        declare: returns the kombu ``Queue`` to use for a DLQ name (declared before use).
        resend: sends a job again: ``resend(entry, args, kwargs, corrected) -> job_id``; returns
            once the broker holds the job.
        store: where the entries are read and taken from.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        queues: Sequence[str],
        declare: Callable[[str], Queue],
        resend: Callable[[DeadLetter, list[Any], dict[str, Any], bool], str],
        store: DeadLetterStore,
        on_publish: Callable[[DeadLetter], None] | None = None,
        on_replay: Callable[[DeadLetter, str], None] | None = None,
    ) -> None:
        self._connect = connect
        self._queues = tuple(queues)
        self._declare = declare
        self._resend = resend
        self._store = store
        self._on_publish = on_publish
        self._on_replay = on_replay

    # -- writing ---------------------------------------------------------

    def declare_all(self) -> None:
        """Declare every DLQ (and on RabbitMQ the dead-letter exchange they are bound to).

        A worker calls it as it starts, so a message the broker dead-letters is never
        routed to a queue that does not exist yet.
        """
        conn = self._connect()
        try:
            with conn.channel() as channel:
                for name in self._queues:
                    self._declare(dlq_name(name))(channel).declare()
        finally:
            conn.release()

    def publish(self, entry: DeadLetter, connection: Connection | None = None) -> None:
        """Put ``entry`` on ``<entry.queue>.dlq``; returns once the broker confirmed it.

        Raises:
            Exception: the broker's or kombu's error when the entry was not stored; the
                caller keeps the job (it must not be acknowledged).
        """
        from kombu import Producer

        queue = self._declare(dlq_name(entry.queue))
        conn = connection or self._connect()
        try:
            with conn.channel() as channel:
                producer = Producer(channel)
                producer.publish(
                    json.dumps(entry.to_dict(), default=str),
                    exchange="",
                    routing_key=queue.name,
                    declare=[queue],
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers={H_DLQ: 1},
                    delivery_mode=2,
                    retry=True,
                    retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5,
                                  "interval_max": 2},
                )
        finally:
            if connection is None:
                conn.release()
        if self._on_publish is not None:
            self._on_publish(entry)

    # -- reading ---------------------------------------------------------

    def _names(self, queue: str | None) -> tuple[str, ...]:
        if queue is None:
            return self._queues
        if queue.endswith(DLQ_SUFFIX):
            queue = queue[: -len(DLQ_SUFFIX)]
        if queue not in self._queues:
            raise UnknownQueue(f"unknown queue {queue!r}; configured queues: {', '.join(self._queues)}")
        return (queue,)

    def _parse_cursor(self, names: tuple[str, ...], cursor: str | None) -> tuple[int, int]:
        if cursor is None:
            return 0, 0
        queue, sep, offset = cursor.rpartition("@")
        if not sep or queue not in names or not offset.isdigit():
            raise ValidationError(f"invalid DLQ cursor {cursor!r}: pass the next_cursor of a previous page "
                                  "listed with the same queue", errors={"cursor": "invalid"})
        return names.index(queue), int(offset)

    def list(self, queue: str | None = None, *, limit: int = DEFAULT_PAGE_SIZE,
             cursor: str | None = None) -> DeadLetterPage:
        """One page of entries, oldest first in each queue, without moving any.

        Parameters:
            queue: one routed queue (or its ``.dlq`` name); None lists every queue in turn.
            limit: most entries returned (1 to ``MAX_PAGE_SIZE``).
            cursor: the ``next_cursor`` of the previous page; None starts at the oldest entry.
                A cursor is a position: entries removed before it in the meantime make the next
                page skip as many entries, entries added never do.

        Raises:
            UnknownQueue: ``queue`` is not a routed queue.
            ValidationError: ``limit`` is out of range or ``cursor`` is not one this call returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}",
                                  errors={"limit": "out of range"})
        names = self._names(queue)
        index, offset = self._parse_cursor(names, cursor)
        out: builtins.list[DeadLetter] = []
        while index < len(names):
            name = names[index]
            entries, more = self._store.page(dlq_name(name), name, offset, limit - len(out))
            out.extend(entries)
            offset += len(entries)
            if len(out) == limit:
                if more:
                    return DeadLetterPage(tuple(out), f"{name}@{offset}")
                nxt = index + 1
                return DeadLetterPage(tuple(out), f"{names[nxt]}@0" if nxt < len(names) else None)
            index, offset = index + 1, 0
        return DeadLetterPage(tuple(out), None)

    def entries(self, queue: str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[DeadLetter]:
        """Every entry, page by page (see ``list``)."""
        cursor: str | None = None
        while True:
            page = self.list(queue, limit=page_size, cursor=cursor)
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def depth(self, queue: str | None = None) -> dict[str, int]:
        """Entries per queue, from the broker's own count (no entry is read)."""
        return {name: self._store.depth(dlq_name(name), name) for name in self._names(queue)}

    def show(self, entry_id: str) -> DeadLetter:
        """One entry by id (or by job id). Raises NotFound."""
        for entry in self.entries(page_size=1000):
            if entry_id in (entry.id, entry.job_id):
                return entry
        raise NotFound(f"no dead-letter entry {entry_id!r}; list them with `esf dlq list`")

    # -- acting ------------------------------------------------------------

    def recover(self, queue: str | None = None) -> int:
        """Give back to their DLQ the entries held by a replay that died (after its claim expired).

        Replay and purge do it first by themselves. Returns how many entries came back.
        """
        return sum(self._store.recover(dlq_name(name)) for name in self._names(queue))

    def replay(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        args: builtins.list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: OnBatch | None = None,
    ) -> builtins.list[str]:
        """Send entries back to their original queue with their job id and correlation id.

        Each entry is taken exclusively, sent, and removed from its DLQ only once the broker
        holds the job: two replays racing for an entry send it once, and a replay killed at
        any point sends an entry at most twice, never zero times.

        Parameters:
            ids: entry ids or job ids; None replays every entry (of ``queue``) dead-lettered
                before this call started, in batches.
            args, kwargs: replace the original arguments of exactly one entry (recorded on the
                job as corrected). An undecodable entry is replayed only with them.
            batch_size: entries per batch; ``progress(removed, read)`` is called after each.

        Returns:
            The job ids sent, in order.

        Raises:
            NotFound: none of the named ids is a replayable entry of any DLQ.
            ValidationError: an empty id list, or corrected arguments for several entries.
        """
        wanted = None if ids is None else set(ids)
        if wanted is not None and not wanted:
            raise ValidationError("replay: name at least one entry id, or replay all")
        if (args is not None or kwargs is not None) and (wanted is None or len(wanted) != 1):
            raise ValidationError("replay: corrected arguments apply to exactly one entry")
        _check_batch(batch_size)
        names = self._names(queue)
        started = time.time()
        sent: builtins.list[str] = []
        found: set[str] = set()
        corrected = args is not None or kwargs is not None

        def select(entry: DeadLetter) -> bool:
            if wanted is not None:
                if not ({entry.id, entry.job_id} & wanted) or ({entry.id, entry.job_id} & found):
                    return False
            elif entry.dead_lettered_at > started:
                return False  # dead-lettered again while this replay runs: left for the next one
            return entry.raw_body is None or corrected  # an undecodable message cannot be sent as it was

        def act(entry: DeadLetter) -> None:
            new_args = list(args) if args is not None else list(entry.args)
            new_kwargs = dict(kwargs) if kwargs is not None else dict(entry.kwargs)
            job_id = self._resend(entry, new_args, new_kwargs, corrected)
            sent.append(job_id)
            found.update({entry.id, entry.job_id})
            if self._on_replay is not None:
                self._on_replay(replace(entry, args=new_args, kwargs=new_kwargs), job_id)

        def done() -> bool:
            return wanted is not None and wanted <= found

        for name in names:
            if done():
                break
            self._store.process(dlq_name(name), name, select, act, batch_size=batch_size, on_batch=progress,
                                done=done)
        if wanted is not None and not sent:
            raise NotFound(f"no replayable dead-letter entry among {sorted(wanted)}")
        return sent

    def purge(self, queue: str | None = None, *, older_than_s: float | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, progress: OnBatch | None = None) -> int:
        """Remove the entries dead-lettered before this call (and ``older_than_s`` seconds ago or more).

        Each entry is removed by the operation that read it, by its exact content: an entry
        a concurrent replay took is not counted, and entries arriving meanwhile are kept.

        Returns:
            How many entries were removed.

        Raises:
            ValidationError: ``older_than_s`` is negative.
        """
        if older_than_s is not None and (isinstance(older_than_s, bool) or older_than_s < 0):
            raise ValidationError("purge: older_than must not be negative", errors={"older_than_s": "negative"})
        _check_batch(batch_size)
        names = self._names(queue)
        cutoff = time.time() - (older_than_s or 0.0)
        removed = 0
        for name in names:
            removed += self._store.process(dlq_name(name), name, lambda e: e.dead_lettered_at <= cutoff, None,
                                           batch_size=batch_size, on_batch=progress, done=lambda: False).removed
        return removed


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"batch_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {batch_size!r}",
                              errors={"batch_size": "out of range"})
