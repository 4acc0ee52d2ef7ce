"""What a subscription is (a frozen declaration) and how its options are checked."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ValidationError, describe_errors
from ..events._query import Filter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_IN_FLIGHT",
    "HANDLER_JOB_PREFIX",
    "MAX_BATCH_SIZE",
    "NAME_RE",
    "PARTITIONS",
    "Subscription",
    "SubscriptionStatus",
    "check_options",
]

#: Subscription names: a letter, then letters, digits, ``_ . -`` (at most 100 characters).
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
#: What ``partition_by`` accepts (``None``: one partition, strictly ordered).
PARTITIONS = ("stream_id", "correlation_id")
#: Events per batch (one handler job) unless given.
DEFAULT_BATCH_SIZE = 100
#: Batches sent and not finished, per subscription, unless given.
DEFAULT_MAX_IN_FLIGHT = 8
#: Largest ``batch_size`` (a batch's positions travel in its job's arguments).
MAX_BATCH_SIZE = 1000
#: Largest ``max_in_flight``.
MAX_IN_FLIGHT = 1000
#: A projection's table names: SQL identifiers short enough for their shadow copy's name.
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")
#: Handler jobs are named ``esf.subscription.<name>``.
HANDLER_JOB_PREFIX = "esf.subscription."

OnDeadLetter = Literal["continue", "pause"]
Start = Literal["beginning", "now"] | int


@dataclass(frozen=True)
class Subscription:
    """A declared subscription (or projection).

    Attributes:
        name: unique name; its checkpoint is stored under it.
        handler: ``handler(event)``; a projection's is ``handler(event, session)``.
        filter: server-side filter (``esf.Q``); ``None`` delivers every event.
        start: where a new subscription begins: ``"beginning"``, ``"now"`` or a position
            (the first event delivered is the next one after it).
        batch_size: most events handed to one handler job.
        max_in_flight: most handler jobs sent and not finished at a time.
        partition_by: ``"stream_id"``, ``"correlation_id"``, or ``None`` (strictly ordered).
        queue: the routed queue of the handler jobs.
        projection: the handler writes through a session committed with the checkpoint.
        on_dead_letter: ``"continue"`` (the subscription goes on) or ``"pause"``.
        tables: the tables a projection's handler writes (its read model), which
            ``esf projections rebuild`` replays into fresh copies of and swaps in.
        job_name: the handler job's name (``esf.subscription.<name>``).
    """

    name: str
    handler: Callable[..., Any] = field(repr=False, compare=False)
    filter: Filter | None
    start: Start
    batch_size: int
    max_in_flight: int
    partition_by: str | None
    queue: str
    projection: bool = False
    on_dead_letter: OnDeadLetter = "continue"
    tables: tuple[str, ...] = ()

    @property
    def job_name(self) -> str:
        return HANDLER_JOB_PREFIX + self.name

    def describe(self) -> dict[str, Any]:
        """A JSON description, stored with the subscription's state and shown by the CLI."""
        return {
            "kind": "projection" if self.projection else "subscription",
            "filter": repr(self.filter) if self.filter is not None else None,
            "start": self.start,
            "batch_size": self.batch_size,
            "max_in_flight": self.max_in_flight,
            "partition_by": self.partition_by,
            "queue": self.queue,
            "on_dead_letter": self.on_dead_letter,
            "job": self.job_name,
            **({"tables": list(self.tables)} if self.projection else {}),
        }


@dataclass(frozen=True)
class SubscriptionStatus:
    """Where a subscription stands (``esf subscriptions show``).

    Attributes:
        name: the subscription.
        checkpoint: every matching event at or below this position was handled or dead-lettered.
        cursor: the highest position read (events above it are not read yet).
        head: the store's last position.
        lag_events: ``head - checkpoint``.
        lag_seconds: age of the oldest event above the checkpoint (0 when caught up).
        paused: no new batch is sent.
        stopped_reason: why it paused itself (a dead-lettered batch), if it did.
        queued: batches read and waiting for their partition or for room.
        in_flight: batches sent and not finished.
        dead: batches whose handler job is in the DLQ.
        declared: declared in this process (False: only its stored state exists here).
        spec: the stored description (filter, partitioning, batch size, queue …).
        dead_batches: up to 100 dead batches: ``batch``, ``positions``, ``job_id``, ``error``.
    """

    name: str
    checkpoint: int
    cursor: int
    head: int
    lag_events: int
    lag_seconds: float
    paused: bool
    stopped_reason: str | None
    queued: int
    in_flight: int
    dead: int
    declared: bool
    spec: dict[str, Any] = field(default_factory=dict)
    dead_batches: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_backend(cls, data: dict[str, Any], *, declared: bool) -> SubscriptionStatus:
        return cls(name=data["name"], checkpoint=data["checkpoint"], cursor=data["cursor"], head=data["head"],
                   lag_events=data["lag_events"], lag_seconds=data["lag_seconds"], paused=data["paused"],
                   stopped_reason=data["stopped_reason"], queued=data["queued"], in_flight=data["sent"],
                   dead=data["dead"], declared=declared, spec=data["spec"], dead_batches=data["dead_batches"])

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_options(*, name: Any, handler: Any, filter: Any, start: Any, batch_size: Any, max_in_flight: Any,
                  partition_by: Any, on_dead_letter: Any, tables: Any = (), projection: bool = False) -> None:
    """Check a subscription's options; every bad one is named.

    Raises:
        ValidationError: one or more options are invalid (``errors`` maps option → problem).
    """
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not NAME_RE.match(name):
        errors["name"] = f"must match {NAME_RE.pattern}"
    if not callable(handler):
        errors["handler"] = "must be callable"
    if filter is not None and not isinstance(filter, Filter):
        errors["filter"] = "must be a filter built with esf.Q, or None"
    if not (start in ("beginning", "now") or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)):
        errors["start"] = "must be 'beginning', 'now' or a position >= 0"
    limits = (("batch_size", batch_size, MAX_BATCH_SIZE), ("max_in_flight", max_in_flight, MAX_IN_FLIGHT))
    for key, value, top in limits:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            errors[key] = f"must be an integer from 1 to {top}"
    if partition_by is not None and partition_by not in PARTITIONS:
        errors["partition_by"] = "must be 'stream_id', 'correlation_id' or None"
    if on_dead_letter not in ("continue", "pause"):
        errors["on_dead_letter"] = "must be 'continue' or 'pause'"
    if tables and not projection:
        errors["tables"] = "only a projection has tables"
    elif not isinstance(tables, (list, tuple)) or not all(isinstance(t, str) and TABLE_RE.match(t) for t in tables):
        errors["tables"] = f"must be a list of table names matching {TABLE_RE.pattern} (or SQLAlchemy tables)"
    if errors:
        raise ValidationError(f"invalid subscription options: {describe_errors(errors)}", errors=errors)
