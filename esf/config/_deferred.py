"""Configuration batches handed to the foundation: applied by the ``esf.config.apply_batch`` task, now or at a time.

``update_batch_async`` checks the batch here (paths, permissions, JSON values) and
sends it to a worker; ``schedule_batch`` records the batch as a stream of events
(``config-batch-<id>``: ``config.batch_scheduled`` → ``config.batch_applying`` →
``config.batch_applied`` | ``config.batch_refused``, or ``config.batch_cancelled``) and
sends the task with an ETA. The event stream arbitrates between the task and a
cancellation with the store's optimistic concurrency: each step is appended with the
stream version it read, so a batch is either cancelled or applied, never both.
A refused batch (a conflicting ``expected_version``, a value its schema rejects) raises
from the task, which dead-letters it with that error; replaying it tries again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from .._ids import new_id
from ..errors import Conflict, NotFound, ServiceUnavailable, ValidationError
from ._batch import check_batch
from ._paths import DELETE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events import StoredEvent
    from ..events._facade import Events
    from ..jobs import JobHandle, JobService
    from ._service import ConfigService

#: The task that applies a batch.
APPLY_JOB = "esf.config.apply_batch"
#: Stream of one scheduled batch: ``config-batch-<id>``.
STREAM_PREFIX = "config-batch-"

State = Literal["pending", "applying", "applied", "refused", "cancelled"]
_STATES: dict[str, State] = {
    "config.batch_scheduled": "pending",
    "config.batch_applying": "applying",
    "config.batch_applied": "applied",
    "config.batch_refused": "refused",
    "config.batch_cancelled": "cancelled",
}


@dataclass(frozen=True)
class ScheduledBatch:
    """A configuration batch to apply at ``at`` (UTC), and where it stands.

    Parameters:
        id: the batch's id (``esf config scheduled show ID``).
        at: when it applies.
        changes: ``path -> JSON value``.
        expected_version: compare-and-set version, or None.
        actor: who scheduled it (recorded in the configuration history).
        state: ``pending``, ``applying``, ``applied``, ``refused`` or ``cancelled``.
        version: the configuration version it produced (applied).
        error: why it was refused (``ConcurrencyConflict: …``).
        stream_version: version of its event stream (a cancellation's compare-and-set).
    """

    id: str
    at: datetime
    changes: dict[str, Any] = field(default_factory=dict)
    expected_version: int | None = None
    actor: str | None = None
    state: State = "pending"
    version: int | None = None
    error: str | None = None
    stream_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "changes": dict(self.changes),
                "expected_version": self.expected_version, "actor": self.actor, "state": self.state,
                "version": self.version, "error": self.error}


class DeferredBatches:
    """``fnd.config.update_batch_async`` / ``schedule_batch`` and the scheduled batches' book-keeping.

    Parameters:
        config: the configuration service the batches apply to.
        events: the event store (each batch's stream: its claim and outcome).
        jobs: the jobs service ``esf.config.apply_batch`` is sent through.
    """

    def __init__(self, config: ConfigService, *, events: Callable[[], Events], jobs: Callable[[], JobService]) -> None:
        self._config = config
        self._events = events
        self._jobs = jobs

    # -- sending ---------------------------------------------------------------

    def check(self, changes: Any, expected_version: Any, actor: Any) -> dict[str, Any]:
        """Check a batch at the call site.

        Raises:
            ValidationError: malformed or overlapping paths, non-JSON values, a secret or ``DELETE`` value
                (neither travels in a task argument), a bad ``expected_version``, or a document the
                registered schemas and validators refuse (checked against the current snapshot).
            PermissionDenied: read-only paths, or paths restricted to other actors.
        Returns:
            the batch as plain JSON values.
        """
        from ..secrets import Secret

        if expected_version is not None and (isinstance(expected_version, bool) or not isinstance(expected_version, int)
                                             or expected_version < 0):
            raise ValidationError(f"expected_version: must be an integer >= 0, got {expected_version!r}",
                                  errors={"expected_version": "invalid"})
        if actor is not None and not isinstance(actor, str):
            raise ValidationError("actor: must be a string", errors={"actor": "invalid"})
        if isinstance(changes, dict):
            bad = {str(p): "a secret value never travels in a task argument: use update_batch"
                   for p, v in changes.items() if isinstance(v, Secret)}
            bad.update({str(p): "DELETE is not supported in a deferred batch: use update_batch"
                        for p, v in changes.items() if v is DELETE})
            if bad:
                raise ValidationError(f"cannot defer this batch: {', '.join(sorted(bad))}", errors=bad)
        config = self._config
        prepared, _ = check_batch(changes, config._rules, actor, config._settings.max_value_bytes)
        config.validate_batch(prepared, actor=actor)  # schemas and validators, against the current snapshot
        return prepared

    def update_batch_async(self, changes: Any, *, expected_version: int | None = None,
                           actor: str | None = None) -> JobHandle:
        """Check the batch now and apply it on a worker (``handle.wait(timeout)`` returns the new version).

        Raises:
            ValidationError, PermissionDenied: see :meth:`check` (nothing is sent).
            ServiceUnavailable: the broker is unreachable.
        """
        prepared = self.check(changes, expected_version, actor)
        return self._jobs().get(APPLY_JOB).enqueue_with([prepared], {"expected_version": expected_version,
                                                                     "actor": actor})

    def schedule_batch(self, changes: Any, *, at: datetime, expected_version: int | None = None,
                       actor: str | None = None) -> ScheduledBatch:
        """Record the batch and send it to apply at ``at`` (an aware datetime).

        Raises:
            ValidationError, PermissionDenied: see :meth:`check`; ``at`` naive (nothing is recorded or sent).
            ServiceUnavailable: the event store or the broker is unreachable (a recorded batch whose
                task could not be sent is recorded as cancelled).
        """
        if not isinstance(at, datetime) or at.tzinfo is None or not math.isfinite(at.timestamp()):
            raise ValidationError("at: must be a timezone-aware datetime", errors={"at": "naive or not a datetime"})
        prepared = self.check(changes, expected_version, actor)
        batch = ScheduledBatch(id=new_id(), at=at.astimezone(UTC), changes=prepared,
                               expected_version=expected_version, actor=actor, stream_version=1)
        self._append(batch.id, "config.batch_scheduled", {k: v for k, v in batch.to_dict().items()
                                                          if k not in ("state", "version", "error")}, 0)
        try:
            self._jobs().get(APPLY_JOB).enqueue_with(
                [prepared], {"expected_version": expected_version, "actor": actor, "batch_id": batch.id},
                eta=batch.at, correlation_id=f"config-batch:{batch.id}")
        except ServiceUnavailable as exc:
            self._append(batch.id, "config.batch_cancelled", {"reason": f"not sent: {exc}"}, 1)
            raise
        return batch

    # -- reading and cancelling ------------------------------------------------------

    def get(self, batch_id: str) -> ScheduledBatch:
        """The scheduled batch ``batch_id``. Raises NotFound."""
        if not isinstance(batch_id, str) or not batch_id or len(batch_id) > 100:
            raise NotFound(f"no scheduled configuration batch {batch_id!r}")
        events = self._events().read_stream(STREAM_PREFIX + batch_id)
        if not events or events[0].event_type != "config.batch_scheduled":
            raise NotFound(f"no scheduled configuration batch {batch_id!r}; see `esf config scheduled list`")
        return _fold(batch_id, events)

    def scheduled(self, *, include_done: bool = False) -> list[ScheduledBatch]:
        """Scheduled batches by time: pending and refused ones (every one with ``include_done``)."""
        from ..events import Q, QueryableEventStore, require_capability

        require_capability(self._events(), QueryableEventStore, needed_for="config scheduled batches")
        out = []
        for e in self._events().query(Q.type("config.batch_scheduled")):
            batch = self.get(str(e.stream_id)[len(STREAM_PREFIX):])
            if include_done or batch.state in ("pending", "refused"):
                out.append(batch)
        return sorted(out, key=lambda b: (b.at, b.id))

    def cancel(self, batch_id: str) -> ScheduledBatch:
        """Cancel a pending (or refused) batch: its task then applies nothing.

        Raises:
            NotFound: no such batch.
            Conflict: it is being applied, was applied, or was cancelled.
        """
        from ..errors import ConcurrencyConflict

        batch = self.get(batch_id)
        if batch.state not in ("pending", "refused"):
            raise Conflict(f"configuration batch {batch_id} is {batch.state}; only a pending or refused one can be "
                           "cancelled", state=batch.state)
        try:
            self._append(batch_id, "config.batch_cancelled", {"reason": "cancelled"}, batch.stream_version)
        except ConcurrencyConflict:
            raise Conflict(f"configuration batch {batch_id} changed meanwhile ({self.get(batch_id).state})",
                           state=self.get(batch_id).state) from None
        return self.get(batch_id)

    # -- the task's side ---------------------------------------------------------------

    def apply(self, changes: dict[str, Any], *, expected_version: int | None, actor: str | None,
              batch_id: str | None) -> dict[str, Any]:
        """Apply a batch (the body of ``esf.config.apply_batch``).

        Raises:
            ConcurrencyConflict, ValidationError, PermissionDenied: the batch is refused (recorded on a
                scheduled batch's stream, then raised: the job is dead-lettered with it).
            ServiceUnavailable: the configuration or event store is unreachable (retried).
        """
        if batch_id is None:
            return {"version": self._config.update_batch(changes, expected_version=expected_version, actor=actor)}
        batch = self.get(batch_id)
        if batch.state == "cancelled":
            return {"batch_id": batch_id, "cancelled": True}
        if batch.state == "applied":
            return {"batch_id": batch_id, "version": batch.version}  # a redelivery after it was applied
        head = batch.stream_version
        if batch.state != "applying":  # a redelivery of a claimed batch goes on from its claim
            self._append(batch_id, "config.batch_applying", {}, head)  # ConcurrencyConflict: cancelled meanwhile
            head += 1
        try:
            version = self._config.update_batch(changes, expected_version=expected_version,
                                                actor=actor or f"scheduled:{batch_id}")
        except ServiceUnavailable:
            raise
        except Exception as exc:
            self._append(batch_id, "config.batch_refused", {"error": f"{type(exc).__name__}: {exc}"}, head)
            raise
        self._append(batch_id, "config.batch_applied", {"version": version}, head)
        return {"batch_id": batch_id, "version": version}

    def _append(self, batch_id: str, event_type: str, data: dict[str, Any], expected: int) -> None:
        from ..events import Event

        self._events().append(Event(event_type, data, stream_id=STREAM_PREFIX + batch_id,
                                    correlation_id=f"config-batch:{batch_id}"), expected_version=expected)


def _fold(batch_id: str, events: list[StoredEvent]) -> ScheduledBatch:
    first = events[0].data
    state: State = "pending"
    version = error = None
    for e in events:
        state = _STATES.get(e.event_type, state)
        if e.event_type == "config.batch_applied":
            version = e.data.get("version")
        elif e.event_type == "config.batch_refused":
            error = e.data.get("error")
    return ScheduledBatch(id=batch_id, at=datetime.fromisoformat(first["at"]), changes=dict(first["changes"]),
                          expected_version=first.get("expected_version"), actor=first.get("actor"), state=state,
                          version=version, error=error, stream_version=events[-1].stream_version)
