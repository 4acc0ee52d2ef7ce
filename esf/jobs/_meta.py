"""What ESF carries in a job message's headers, and the job context of the running handler."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Header names ESF sets on every job message.
H_CORRELATION = "esf_correlation_id"
H_IDEMPOTENCY = "esf_idempotency_key"
H_ATTEMPT = "esf_attempt"
H_ENQUEUED_AT = "esf_enqueued_at"
H_FIRST_ATTEMPT_AT = "esf_first_attempt_at"
H_QUEUE = "esf_queue"
H_REPLAY = "esf_replay"
H_REPLAYED_FROM = "esf_replayed_from"
H_ARGS_CORRECTED = "esf_args_corrected"
H_PARENT = "esf_parent_id"
#: Feature-flag evaluation context and answers of the enqueuing request (see ``esf.flags``).
H_FLAGS = "esf_flags"
#: ``<gather id>:<index>`` of a job sent by ``fnd.gather`` (see ``esf.jobs._gather``).
H_GATHER = "esf_gather"

ALL_HEADERS = (
    H_CORRELATION,
    H_IDEMPOTENCY,
    H_ATTEMPT,
    H_ENQUEUED_AT,
    H_FIRST_ATTEMPT_AT,
    H_QUEUE,
    H_REPLAY,
    H_REPLAYED_FROM,
    H_ARGS_CORRECTED,
    H_PARENT,
    H_FLAGS,
    H_GATHER,
)


@dataclass(frozen=True)
class JobMeta:
    """ESF's metadata of one job message."""

    queue: str
    correlation_id: str | None = None
    idempotency_key: str | None = None
    attempt: int = 1
    enqueued_at: float | None = None
    first_attempt_at: float | None = None
    replay: int = 0
    replayed_from: str | None = None
    args_corrected: bool = False
    parent_id: str | None = None
    #: ``{"context": {...}, "answers": {flag: [value, variant, reason, rule]}}`` (JSON), or None.
    flags: Mapping[str, Any] | None = None
    #: ``<gather id>:<index>`` when the job is a member of a gather.
    gather: str | None = None

    def headers(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            H_QUEUE: self.queue,
            H_ATTEMPT: self.attempt,
            H_ENQUEUED_AT: self.enqueued_at if self.enqueued_at is not None else time.time(),
            H_REPLAY: self.replay,
        }
        for name, value in (
            (H_CORRELATION, self.correlation_id),
            (H_IDEMPOTENCY, self.idempotency_key),
            (H_FIRST_ATTEMPT_AT, self.first_attempt_at),
            (H_REPLAYED_FROM, self.replayed_from),
            (H_PARENT, self.parent_id),
            (H_GATHER, self.gather),
        ):
            if value is not None:
                out[name] = value
        if self.args_corrected:
            out[H_ARGS_CORRECTED] = True
        if self.flags:
            out[H_FLAGS] = self.flags
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None, default_queue: str) -> JobMeta:
        h = headers or {}

        def num(name: str) -> float | None:
            v = h.get(name)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        attempt = h.get(H_ATTEMPT)
        replay = h.get(H_REPLAY)
        return cls(
            queue=str(h.get(H_QUEUE) or default_queue),
            correlation_id=_opt_str(h.get(H_CORRELATION)),
            idempotency_key=_opt_str(h.get(H_IDEMPOTENCY)),
            attempt=attempt if isinstance(attempt, int) and attempt > 0 else 1,
            enqueued_at=num(H_ENQUEUED_AT),
            first_attempt_at=num(H_FIRST_ATTEMPT_AT),
            replay=replay if isinstance(replay, int) and replay >= 0 else 0,
            replayed_from=_opt_str(h.get(H_REPLAYED_FROM)),
            args_corrected=bool(h.get(H_ARGS_CORRECTED)),
            parent_id=_opt_str(h.get(H_PARENT)),
            flags=_opt_flags(h.get(H_FLAGS)),
            gather=_opt_str(h.get(H_GATHER)),
        )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_flags(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping) and isinstance(value.get("context"), Mapping) \
            and isinstance(value.get("answers"), Mapping):
        return value
    return None


@dataclass(frozen=True)
class Current:
    """The job whose handler is running in this thread (for propagation to jobs it enqueues)."""

    job_id: str
    correlation_id: str | None


current_job: contextvars.ContextVar[Current | None] = contextvars.ContextVar("esf_current_job", default=None)


class FlagCarry:
    """Flag evaluations of one request or job: its context and the answers given so far.

    ``esf.flags`` fills it (``fnd.flags.scope(context)``, or from a job's headers);
    a job enqueued while it is current carries it in the ``esf_flags`` header.
    """

    __slots__ = ("answers", "context", "correlation_id", "exposed", "received")

    def __init__(self, context: Mapping[str, Any], answers: Mapping[str, list[Any]] | None = None, *,
                 received: bool = False, correlation_id: str | None = None) -> None:
        self.context = context
        #: flag -> ``[value, variant, reason, rule]`` (JSON).
        self.answers: dict[str, list[Any]] = dict(answers or {})
        #: True in a job: ``answers`` came from the enqueuing request.
        self.received = received
        self.correlation_id = correlation_id
        #: Flags whose exposure was already recorded in this scope.
        self.exposed: set[str] = set()

    def to_wire(self) -> dict[str, Any] | None:
        return {"context": dict(self.context), "answers": dict(self.answers)}


#: The flag evaluations of the running request or job (None outside any).
current_flags: contextvars.ContextVar[FlagCarry | None] = contextvars.ContextVar("esf_current_flags", default=None)
