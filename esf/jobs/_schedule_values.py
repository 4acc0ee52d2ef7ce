"""The schedule value: a job fired on a crontab or at an interval, validated when it is built."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from .._json import check_json
from ..errors import ValidationError
from ._cron import next_cron_time, parse_cron
from ._options import JOB_NAME_RE

if TYPE_CHECKING:
    from ._schedule_stores import StoredRecord

__all__ = ["MAX_SCHEDULE_NAME", "Origin", "Schedule", "from_epoch", "seconds", "to_epoch", "utcnow"]

#: Schedule names: dotted identifiers (like job names), at most 200 characters.
MAX_SCHEDULE_NAME = 200

Origin = Literal["code", "runtime"]


@dataclass(frozen=True)
class Schedule:
    """A job fired on a crontab (``cron``) or every ``every`` seconds; all times are UTC.

    Parameters:
        name: the schedule's name (dotted identifiers, at most 200 characters; default: the job's name).
        job: the name of the job to enqueue.
        cron: a 5-field crontab (``"*/5 * * * *"``); give ``cron`` or ``every``.
        every: seconds between fires (> 0), or a ``timedelta``; stored as seconds.
        args, kwargs: the job's arguments (JSON only).
        queue: the queue to send to (default: the job's own queue).
        enabled: a disabled schedule is kept but never fires.
        timezone: only ``"UTC"``.
        next_run_at, last_run_at: run state, filled in by the store.
        origin: ``"code"`` (declared with ``@fnd.schedule``) or ``"runtime"``.
        revision: the store's revision of this definition (0: not stored).

    Raises:
        ValidationError: a field is invalid (``errors`` names every bad field).
        SerializationError: ``args`` or ``kwargs`` is not JSON.
    """

    name: str
    job: str
    cron: str | None = None
    every: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    enabled: bool = True
    timezone: str = "UTC"
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    origin: Origin = "runtime"
    revision: int = 0

    def __post_init__(self) -> None:
        errors: dict[str, str] = {}
        for label, value, limit in (("name", self.name, MAX_SCHEDULE_NAME), ("job", self.job, 200)):
            if not isinstance(value, str) or len(value) > limit or not JOB_NAME_RE.match(value):
                errors[label] = f"{value!r} is not a valid name (dotted identifiers, at most {limit} characters)"
        every: Any = self.every
        if isinstance(every, timedelta):
            every = every.total_seconds()
            object.__setattr__(self, "every", every)
        if (self.cron is None) == (every is None):
            errors["every" if self.cron is None else "cron"] = "give exactly one of cron or every"
        elif every is not None and (isinstance(every, bool) or not isinstance(every, int | float)
                                    or not math.isfinite(every) or every <= 0):
            errors["every"] = f"must be a number of seconds > 0, got {every!r}"
        elif every is not None:
            object.__setattr__(self, "every", float(every))
        elif self.cron is not None:
            try:
                next_cron_time(parse_cron(self.cron), datetime(2000, 1, 1, tzinfo=UTC))
                object.__setattr__(self, "cron", " ".join(self.cron.split()))
            except ValidationError as exc:
                errors["cron"] = str(exc)
        if self.queue is not None and not isinstance(self.queue, str):
            errors["queue"] = f"must be a queue name, got {type(self.queue).__name__}"
        if not isinstance(self.enabled, bool):
            errors["enabled"] = f"must be true or false, got {self.enabled!r}"
        if self.timezone != "UTC":
            errors["timezone"] = f"only 'UTC' is supported, got {self.timezone!r}"
        if self.origin not in ("code", "runtime"):
            errors["origin"] = "must be 'code' or 'runtime'"
        if not isinstance(self.args, tuple | list):
            errors["args"] = f"must be a list, got {type(self.args).__name__}"
        if not isinstance(self.kwargs, Mapping):
            errors["kwargs"] = f"must be an object, got {type(self.kwargs).__name__}"
        if errors:
            detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise ValidationError(f"invalid schedule {self.name!r}: {detail}", errors=errors)
        check_json(list(self.args), f"schedule {self.name} args")
        check_json(dict(self.kwargs), f"schedule {self.name} kwargs")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    # -- timing -----------------------------------------------------------

    def first_run_after(self, now: datetime) -> datetime:
        """When a new (or re-timed) schedule first fires: one interval after ``now``, or the next cron time."""
        if self.every is not None:
            if self.last_run_at is not None:
                return max(now, self.last_run_at + timedelta(seconds=self.every))
            return now + timedelta(seconds=self.every)
        return next_cron_time(parse_cron(str(self.cron)), now)

    def following(self, due: datetime, now: datetime) -> datetime:
        """The next fire after the occurrence ``due`` fired at ``now``; missed occurrences are skipped.

        An interval stays on its grid (``due + k * every``, the first one after ``now``);
        a cron schedule moves to its first time after ``now``.
        """
        if self.every is not None:
            step = self.every
            k = max(1, math.floor((now - due).total_seconds() / step) + 1)
            return due + timedelta(seconds=k * step)
        return next_cron_time(parse_cron(str(self.cron)), max(due, now))

    # -- encoding -----------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """The stored definition (JSON): every field but the name, the run state and the revision."""
        return {"job": self.job, "cron": self.cron, "every": self.every, "args": list(self.args),
                "kwargs": dict(self.kwargs), "queue": self.queue, "enabled": self.enabled,
                "timezone": self.timezone, "origin": self.origin}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (times as ISO-8601 strings)."""
        out = {"name": self.name, **self.definition(), "revision": self.revision}
        out["next_run_at"] = self.next_run_at.isoformat() if self.next_run_at else None
        out["last_run_at"] = self.last_run_at.isoformat() if self.last_run_at else None
        return out

    @classmethod
    def from_record(cls, record: StoredRecord) -> Schedule:
        d = json.loads(record.definition)
        return cls(name=record.name, job=d["job"], cron=d.get("cron"), every=d.get("every"),
                   args=tuple(d.get("args") or ()), kwargs=d.get("kwargs") or {}, queue=d.get("queue"),
                   enabled=bool(d.get("enabled", True)), timezone=d.get("timezone", "UTC"),
                   origin=d.get("origin", "runtime"), revision=record.revision,
                   next_run_at=from_epoch(record.next_run_at), last_run_at=from_epoch(record.last_run_at))


def seconds(every: float | timedelta | None) -> float | None:
    """``every`` in seconds (a ``timedelta`` is converted; anything else is left for validation)."""
    return every.total_seconds() if isinstance(every, timedelta) else every


def from_epoch(ts: float | None) -> datetime | None:
    """Epoch seconds as a UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_epoch(dt: datetime | None) -> float | None:
    """A datetime as epoch seconds (None stays None)."""
    return None if dt is None else dt.timestamp()


def utcnow() -> datetime:
    """Now in UTC, to the millisecond (so interval grids and occurrence ids are exact milliseconds)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)

