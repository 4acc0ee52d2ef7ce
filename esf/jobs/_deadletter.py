"""Dead-letter queues: every routed queue ``Q`` has ``Q.dlq``.

An entry is a JSON message on ``Q.dlq`` holding the job and its failure.
ESF publishes entries itself when a job exhausts its retries, raises a
non-retryable error, exceeds its time limit, or arrives as a message that
cannot be decoded or names an unknown job. On RabbitMQ the queues also carry
the broker's own dead-lettering (``x-dead-letter-exchange`` and a quorum
``x-delivery-limit``): a message the broker dead-letters arrives as the raw
Celery message with ``x-death`` headers, and is read as an entry all the same.

Listing reads the messages without consuming them (they are returned to the
queue when the browsing channel closes); replay and purge acknowledge the
entries they take.
"""

from __future__ import annotations

import base64
import builtins
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, UnknownQueue, ValidationError
from ._meta import H_ATTEMPT, H_CORRELATION, H_FIRST_ATTEMPT_AT, H_IDEMPOTENCY, H_QUEUE, H_REPLAY

if TYPE_CHECKING:
    from kombu import Connection, Message, Queue

#: Header marking a message published by ESF as a dead-letter entry.
H_DLQ = "esf_dlq"
#: Suffix of every dead-letter queue.
DLQ_SUFFIX = ".dlq"
#: Most messages one browse reads from one queue.
MAX_BROWSE = 10_000


def dlq_name(queue: str) -> str:
    return queue + DLQ_SUFFIX


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered job and why it failed."""

    id: str
    job_id: str
    job: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    idempotency_key: str | None = None
    #: ``retries_exhausted``, ``non_retryable``, ``time_limit``, ``delivery_limit``,
    #: ``undecodable``, ``unknown_job``, ``rejected``.
    reason: str = "failed"
    exception_type: str | None = None
    exception_message: str | None = None
    traceback: str | None = None
    attempts: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    dead_lettered_at: float = 0.0
    replay: int = 0
    #: Undecodable messages: the raw body, base64, and its content type.
    raw_body: str | None = None
    content_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The fields shown by ``esf dlq list``."""
        return {
            "id": self.id,
            "job": self.job,
            "job_id": self.job_id,
            "queue": self.queue,
            "reason": self.reason,
            "error": f"{self.exception_type}: {self.exception_message}" if self.exception_type else None,
            "attempts": self.attempts,
            "dead_lettered_at": _iso(self.dead_lettered_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeadLetter:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def entry_from_message(body: bytes | str, headers: Mapping[str, Any] | None, content_type: str | None,
                       fallback_queue: str) -> DeadLetter:
    """Read a DLQ message: an ESF entry, or a raw Celery message dead-lettered by the broker."""
    h = dict(headers or {})
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if h.get(H_DLQ):
        return DeadLetter.from_dict(json.loads(text))
    # A Celery protocol-2 message dead-lettered by RabbitMQ (x-dead-letter-exchange / delivery-limit).
    deaths = h.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], Mapping) else {}
    reason = str(h.get("x-first-death-reason") or first.get("reason") or "rejected")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    try:
        decoded = json.loads(text)
        if isinstance(decoded, list) and len(decoded) >= 2:
            args, kwargs = list(decoded[0]), dict(decoded[1])
    except (ValueError, TypeError):
        pass
    when = first.get("time")
    dead_at = when.timestamp() if isinstance(when, datetime) else time.time()
    job_id = str(h.get("id") or uuid.uuid4())
    return DeadLetter(
        id=f"x-{job_id}",
        job_id=job_id,
        job=str(h.get("task") or "?"),
        queue=str(h.get(H_QUEUE) or first.get("queue") or fallback_queue),
        args=args,
        kwargs=kwargs,
        correlation_id=h.get(H_CORRELATION),
        idempotency_key=h.get(H_IDEMPOTENCY),
        reason="delivery_limit" if reason == "delivery_limit" else reason,
        exception_type="WorkerLost" if reason == "delivery_limit" else "Rejected",
        exception_message=(
            f"dead-lettered by the broker ({reason}) after {h.get('x-delivery-count', '?')} deliveries"
        ),
        attempts=int(h.get(H_ATTEMPT) or 1),
        first_attempt_at=h.get(H_FIRST_ATTEMPT_AT),
        dead_lettered_at=dead_at,
        replay=int(h.get(H_REPLAY) or 0),
    )


def poison_entry(body: bytes | str, headers: Mapping[str, Any] | None, content_type: str | None,
                 queue: str, reason: str, exc: BaseException | None) -> DeadLetter:
    """An entry for a message no handler could run (undecodable, unknown job, invalid)."""
    h = dict(headers or {})
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    return DeadLetter(
        id=str(uuid.uuid4()),
        job_id=str(h.get("id") or uuid.uuid4()),
        job=str(h.get("task") or "?"),
        queue=str(h.get(H_QUEUE) or queue),
        correlation_id=h.get(H_CORRELATION) if isinstance(h.get(H_CORRELATION), str) else None,
        reason=reason,
        exception_type=type(exc).__name__ if exc else None,
        exception_message=str(exc)[:2000] if exc else None,
        attempts=0,
        dead_lettered_at=time.time(),
        raw_body=base64.b64encode(raw[:1_048_576]).decode(),
        content_type=content_type,
    )


class DeadLetterQueues:
    """List, inspect, replay and purge the dead-letter queues of one broker.

    Parameters:
        connect: returns a new kombu ``Connection`` to the broker.
        queues: the routed queues (each has ``<queue>.dlq``).
        declare: returns the kombu ``Queue`` to use for a DLQ name (declared before use).
        resend: sends a job again: ``resend(entry, args, kwargs) -> job_id``.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        queues: Sequence[str],
        declare: Callable[[str], Queue],
        resend: Callable[[DeadLetter, list[Any], dict[str, Any], bool], str],
        on_publish: Callable[[DeadLetter], None] | None = None,
        on_replay: Callable[[DeadLetter, str], None] | None = None,
    ) -> None:
        self._connect = connect
        self._queues = tuple(queues)
        self._declare = declare
        self._resend = resend
        self._on_publish = on_publish
        self._on_replay = on_replay

    # -- writing ---------------------------------------------------------

    def publish(self, entry: DeadLetter, connection: Connection | None = None) -> None:
        """Put ``entry`` on ``<entry.queue>.dlq`` (confirmed where the broker supports it)."""
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

    def _browse(self, queue: str | None, take: Callable[[DeadLetter], bool]) -> builtins.list[DeadLetter]:
        """Read every entry; acknowledge (remove) those for which ``take`` is true; return all read."""
        seen: builtins.list[DeadLetter] = []
        for name in self._names(queue):
            conn = self._connect()
            try:
                channel = conn.channel()
                bound = self._declare(dlq_name(name))(channel)
                bound.declare()
                held: builtins.list[Message] = []
                try:
                    for _ in range(MAX_BROWSE):
                        message = bound.get(no_ack=False, accept=["json", "application/json"])
                        if message is None:
                            break
                        held.append(message)
                        entry = entry_from_message(message.body, message.headers, message.content_type, name)
                        seen.append(entry)
                        if take(entry):
                            message.ack()
                finally:
                    channel.close()  # returns the messages not acknowledged
            finally:
                conn.release()
        seen.sort(key=lambda e: e.dead_lettered_at)
        return seen

    def list(self, queue: str | None = None) -> builtins.list[DeadLetter]:
        """Every entry, oldest first, without removing any."""
        return self._browse(queue, lambda _e: False)

    def depth(self, queue: str | None = None) -> dict[str, int]:
        """Entries per queue."""
        counts = {q: 0 for q in self._names(queue)}
        for entry in self.list(queue):
            counts[entry.queue] = counts.get(entry.queue, 0) + 1
        return counts

    def show(self, entry_id: str) -> DeadLetter:
        """One entry by id (or by job id). Raises NotFound."""
        for entry in self.list():
            if entry_id in (entry.id, entry.job_id):
                return entry
        raise NotFound(f"no dead-letter entry {entry_id!r}; list them with `esf dlq list`")

    # -- acting ------------------------------------------------------------

    def replay(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | None = None,
        args: builtins.list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> builtins.list[str]:
        """Send entries back to their original queue with their job id and correlation id.

        ``ids=None`` replays every entry (of ``queue``). ``args``/``kwargs`` replace the
        original arguments (recorded on the job as corrected). Returns the job ids sent.
        Raises NotFound when a named id is not in any DLQ.
        """
        wanted = None if ids is None else set(ids)
        if wanted is not None and not wanted:
            raise ValidationError("replay: name at least one entry id, or replay all")
        if (args is not None or kwargs is not None) and (wanted is None or len(wanted) != 1):
            raise ValidationError("replay: corrected arguments apply to exactly one entry")
        sent: builtins.list[str] = []
        found: set[str] = set()

        def take(entry: DeadLetter) -> bool:
            if wanted is not None and not ({entry.id, entry.job_id} & wanted):
                return False
            if entry.raw_body is not None and args is None and kwargs is None:
                return False  # an undecodable message cannot be replayed as it was
            corrected = args is not None or kwargs is not None
            new_args = list(args) if args is not None else list(entry.args)
            new_kwargs = dict(kwargs) if kwargs is not None else dict(entry.kwargs)
            job_id = self._resend(entry, new_args, new_kwargs, corrected)
            sent.append(job_id)
            found.update({entry.id, entry.job_id} & (wanted or set()))
            if self._on_replay is not None:
                self._on_replay(replace(entry, args=new_args, kwargs=new_kwargs), job_id)
            return True

        self._browse(queue, take)
        if wanted is not None and not (wanted & found):
            raise NotFound(f"no replayable dead-letter entry among {sorted(wanted)}")
        return sent

    def purge(self, queue: str | None = None, *, older_than_s: float | None = None) -> int:
        """Remove entries (older than ``older_than_s`` seconds when given). Returns how many."""
        if older_than_s is not None and older_than_s < 0:
            raise ValidationError("purge: older_than must not be negative")
        cutoff = None if older_than_s is None else time.time() - older_than_s
        removed = self._browse(queue, lambda e: cutoff is None or e.dead_lettered_at <= cutoff)
        return sum(1 for e in removed if cutoff is None or e.dead_lettered_at <= cutoff)
