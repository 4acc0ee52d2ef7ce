"""A dead-letter entry: the job, why it failed, and how it is read from a DLQ message."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._meta import H_ATTEMPT, H_CORRELATION, H_FIRST_ATTEMPT_AT, H_IDEMPOTENCY, H_QUEUE, H_REPLAY

#: Header marking a message published by ESF as a dead-letter entry.
H_DLQ = "esf_dlq"
#: Suffix of every dead-letter queue.
DLQ_SUFFIX = ".dlq"


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
        # The broker dead-letters a message as its last delivery ends: that is the last attempt.
        last_attempt_at=dead_at,
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
