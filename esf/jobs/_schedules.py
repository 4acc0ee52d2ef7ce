"""Schedules: cron and interval schedules of jobs, their store, and the service that edits them.

A :class:`Schedule` is a value; the store (Redis under ``esf:schedules:`` when a
Redis URL is configured, else ``schedules.sqlite`` under ``data_dir``) holds each
schedule's definition, a revision number and its run state (last and next run).
Every definition change takes a new revision, which is globally unique in the
store; the scheduler (``esf beat``) records a fire only if the revision it read
is still current, so a change made at run time always wins over a fire in flight.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from .._json import dumps
from ..errors import ConcurrencyConflict, Conflict, NotFound, UnknownQueue, ValidationError
from ._cron import next_cron_time, parse_cron
from ._schedule_stores import (
    ABSENT,
    ANY,
    RedisScheduleStore,
    ScheduleStore,
    SqliteScheduleStore,
    StoredRecord,
)
from ._schedule_values import MAX_SCHEDULE_NAME, Origin, Schedule, from_epoch, seconds, to_epoch, utcnow

log = logging.getLogger("esf.beat")

if TYPE_CHECKING:
    from ._job import Job
    from ._service import JobService

__all__ = [
    "ABSENT",
    "ANY",
    "MAX_SCHEDULE_NAME",
    "Origin",
    "RedisScheduleStore",
    "Schedule",
    "HasJobs",
    "ScheduleService",
    "ScheduleStore",
    "SqliteScheduleStore",
    "StoredRecord",
    "next_cron_time",
    "parse_cron",
    "schedule_decorator",
    "schedule_service",
    "seconds",
    "utcnow",
]

#: Fields ``ScheduleService.update`` may change.
UPDATABLE = frozenset({"job", "cron", "every", "args", "kwargs", "queue", "enabled"})
_TIMING = ("cron", "every")

#: Attempts of a read-modify-write before ``update`` gives up with ConcurrencyConflict.
UPDATE_ATTEMPTS = 10


class ScheduleService:
    """Schedules of one jobs service (``fnd.jobs.schedules``): add, change and remove them at run time,
    and the schedules declared in code (``@fnd.schedule``), written to the store when beat starts.

    Parameters:
        jobs: the jobs service whose jobs, queues and settings schedules are checked against.
        store: the store (default: the one of ``fnd.backends``, Redis when configured, else SQLite under ``data_dir``).
    """

    def __init__(self, jobs: JobService, store: ScheduleStore | None = None) -> None:
        self._jobs = jobs
        self._store = store
        self._declared: dict[str, Schedule] = {}
        self._retired: set[str] = set()
        self._parsed: dict[str, tuple[int, str, Schedule]] = {}

    @property
    def store(self) -> ScheduleStore:
        if self._store is None:
            self._store = self._jobs.context.backends().schedule_store()
        return self._store

    # -- checks -----------------------------------------------------------

    def check(self, schedule: Schedule, *, require_job: bool = True) -> None:
        """Check a schedule against this deployment.

        Raises:
            UnknownJob: the job is not declared in this jobs service (``require_job``).
            UnknownQueue: the queue is not configured.
        """
        queues = self._jobs.settings.jobs.queues
        if schedule.queue is not None and schedule.queue not in queues:
            raise UnknownQueue(f"schedule {schedule.name}: unknown queue {schedule.queue!r}; configured queues: "
                               f"{', '.join(queues)}", queue=schedule.queue)
        if require_job:
            self._jobs.get(schedule.job)

    # -- reading ------------------------------------------------------------

    def get(self, name: str) -> Schedule:
        """The stored schedule ``name``. Raises NotFound."""
        record = self.store.get(name)
        if record is None:
            raise NotFound(f"no schedule named {name!r}; see `esf schedules list`", name=name)
        return Schedule.from_record(record)

    def list(self) -> list[Schedule]:
        """Every stored schedule, by name.

        Raises:
            ValidationError: a stored record is not a valid schedule (edited by hand?); see :meth:`readable`.
        """
        return sorted((Schedule.from_record(r) for r in self.store.load()), key=lambda s: s.name)

    def readable(self) -> builtins.list[Schedule]:
        """Every stored schedule that is valid; an invalid record is logged and skipped (the scheduler's view).

        Definitions already parsed at the same revision are reused, so a tick over many unchanged
        schedules costs little more than reading them.
        """
        out: builtins.list[Schedule] = []
        parsed: dict[str, tuple[int, str, Schedule]] = {}
        for record in self.store.load():
            cached = self._parsed.get(record.name)
            if cached is not None and cached[0] == record.revision and cached[1] == record.definition:
                schedule = copy.copy(cached[2])  # same definition: only the run state differs
                object.__setattr__(schedule, "last_run_at", from_epoch(record.last_run_at))
                object.__setattr__(schedule, "next_run_at", from_epoch(record.next_run_at))
            else:
                try:
                    schedule = Schedule.from_record(record)
                except (ValidationError, KeyError, TypeError, ValueError) as exc:
                    log.error("schedule %r is stored with an invalid definition and is skipped: %s", record.name, exc)
                    continue
            parsed[record.name] = (record.revision, record.definition, schedule)
            out.append(schedule)
        self._parsed = parsed
        return sorted(out, key=lambda s: s.name)

    def close(self) -> None:
        """Release the store's connections (a Redis client is the Foundation's and stays open)."""
        close = getattr(self._store, "close", None)
        if close is not None:
            close()

    # -- writing ------------------------------------------------------------

    def add(self, schedule: Schedule, *, require_job: bool = True) -> Schedule:
        """Store a new schedule; beat picks it up on its next tick.

        Raises:
            Conflict: a schedule with that name exists (use :meth:`upsert` or :meth:`update`).
            UnknownJob, UnknownQueue: see :meth:`check`. Nothing is stored on any error.
        Returns:
            the stored schedule, with ``next_run_at`` and ``revision``.
        """
        self.check(schedule, require_job=require_job)
        run = (None, to_epoch(schedule.first_run_after(utcnow())))
        rev = self.store.put(schedule.name, dumps(schedule.definition()), ABSENT, run)
        if not rev:
            raise Conflict(f"a schedule named {schedule.name!r} exists; update or remove it first",
                           name=schedule.name)
        return self.get(schedule.name)

    def upsert(self, schedule: Schedule, *, require_job: bool = True) -> Schedule:
        """Add ``schedule``, or replace the stored definition of that name (the run state is kept unless
        the timing (cron, every) changed or the schedule is re-enabled). Raises as :meth:`add`."""
        self.check(schedule, require_job=require_job)
        for _ in range(UPDATE_ATTEMPTS):
            record = self.store.get(schedule.name)
            if record is None:
                try:
                    return self.add(schedule, require_job=False)
                except Conflict:
                    continue
            current = Schedule.from_record(record)
            if current.definition() == schedule.definition():
                return current
            if self._put_over(current, schedule):
                return self.get(schedule.name)
        raise ConcurrencyConflict(f"schedule {schedule.name!r} kept changing; try again")

    def update(self, name: str, /, **changes: Any) -> Schedule:
        """Change fields of a stored schedule (``job``, ``cron``, ``every``, ``args``, ``kwargs``, ``queue``,
        ``enabled``). Giving ``cron`` clears ``every`` and the other way round.

        Raises:
            NotFound: no such schedule.
            ValidationError: an unknown field or an invalid value (nothing is stored).
            UnknownJob, UnknownQueue: see :meth:`check`.
            ConcurrencyConflict: it kept changing under concurrent updates.
        """
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise ValidationError(f"cannot update {', '.join(unknown)}; updatable: {', '.join(sorted(UPDATABLE))}",
                                  errors={k: "not updatable" for k in unknown})
        if "cron" in changes and changes["cron"] is not None and "every" not in changes:
            changes["every"] = None
        if "every" in changes and changes["every"] is not None and "cron" not in changes:
            changes["cron"] = None
        for _ in range(UPDATE_ATTEMPTS):
            current = self.get(name)
            new = dataclasses.replace(current, **changes)
            self.check(new, require_job="job" in changes)
            if current.definition() == new.definition() or self._put_over(current, new):
                return self.get(name)
        raise ConcurrencyConflict(f"schedule {name!r} kept changing; try again")

    def _put_over(self, current: Schedule, new: Schedule) -> bool:
        retimed = any(getattr(current, f) != getattr(new, f) for f in _TIMING) or (new.enabled and not current.enabled)
        run = None
        if retimed:
            now = utcnow()
            run = (to_epoch(current.last_run_at), to_epoch(dataclasses.replace(new, last_run_at=current.last_run_at)
                                                   .first_run_after(now)))
        return bool(self.store.put(new.name, dumps(new.definition()), current.revision, run))

    def enable(self, name: str) -> Schedule:
        """Enable a schedule; it next fires one interval after its last run (at once if that is past),
        or at its next cron time."""
        return self.update(name, enabled=True)

    def disable(self, name: str) -> Schedule:
        """Disable a schedule: it is kept, and stops firing from beat's next tick."""
        return self.update(name, enabled=False)

    def remove(self, name: str) -> None:
        """Remove a schedule; beat stops firing it from its next tick. Raises NotFound."""
        if not self.store.delete(name):
            raise NotFound(f"no schedule named {name!r}; see `esf schedules list`", name=name)

    # -- declared in code -------------------------------------------------------

    def declare(self, name: str | None = None, *, job: str, cron: str | None = None,
                every: float | timedelta | None = None, args: Sequence[Any] = (),
                kwargs: Mapping[str, Any] | None = None, queue: str | None = None) -> Schedule:
        """Declare a schedule in code (nothing is written until beat starts: :meth:`sync_declared`).

        Raises:
            ValidationError, SerializationError: an invalid field.
            UnknownJob, UnknownQueue: see :meth:`check`.
        """
        schedule = Schedule(name=name or job, job=job, cron=cron, every=seconds(every), args=tuple(args),
                            kwargs=dict(kwargs or {}), queue=queue, origin="code")
        self.check(schedule)
        if schedule.name in self._declared:
            raise ValidationError(f"a schedule named {schedule.name!r} is already declared",
                                  errors={"name": "duplicate"})
        self._declared[schedule.name] = schedule
        return schedule

    def retire(self, name: str) -> None:
        """Declare that the code-declared schedule ``name`` is switched off: :meth:`sync_declared` removes
        it from the store (a schedule of that name added at run time is left alone)."""
        self._declared.pop(name, None)
        self._retired.add(name)

    def declared(self) -> builtins.list[Schedule]:
        """The schedules declared in code in this process."""
        return list(self._declared.values())

    def sync_declared(self) -> builtins.list[str]:
        """Write the code-declared schedules to the store (beat does it at start).

        Code owns the fields it sets (job, cron/every, args, kwargs, queue): they overwrite the
        stored ones. ``enabled`` is left as stored, so a schedule disabled at run time stays disabled
        across restarts. A definition that did not change is not rewritten, so restarting beat does
        not move ``next_run_at``. Schedules added at run time are left alone.

        Code-declared schedules that were retired (:meth:`retire`) are removed.

        Returns:
            the names written.
        """
        for name in sorted(self._retired):
            record = self.store.get(name)
            if record is not None and Schedule.from_record(record).origin == "code" and self.store.delete(name):
                log.info("schedule %s is switched off in settings; removed from the store", name)
        written: builtins.list[str] = []
        for declared in self._declared.values():
            record = self.store.get(declared.name)
            if record is not None:
                stored = Schedule.from_record(record)
                declared = dataclasses.replace(declared, enabled=stored.enabled)
                if stored.definition() == declared.definition():
                    continue
            self.upsert(declared, require_job=False)
            written.append(declared.name)
        return written

    # -- the scheduler's side -------------------------------------------------------

    def record_run(self, schedule: Schedule, last: datetime | None, next_: datetime) -> bool:
        """Record a fire (or a skipped occurrence); False when the schedule changed meanwhile."""
        return self.store.record_run(schedule.name, schedule.revision, to_epoch(last), to_epoch(next_))


class HasJobs(Protocol):
    """What owns a jobs service (a Foundation)."""

    @property
    def jobs(self) -> JobService: ...


def schedule_service(owner: HasJobs) -> ScheduleService:
    """The schedule service of ``owner``'s jobs (``fnd.jobs.schedules``)."""
    return owner.jobs.schedules


def schedule_decorator(owner: HasJobs, name: str | None = None, *, cron: str | None = None,
                       every: float | timedelta | None = None, args: Sequence[Any] = (),
                       kwargs: Mapping[str, Any] | None = None,
                       queue: str | None = None) -> Callable[[Callable[..., Any]], Job[Any, Any]]:
    """``@fnd.schedule(cron=…)`` / ``@fnd.schedule(every=…)``: declare a schedule of the decorated job
    (a plain function is first declared as a job, on ``queue`` when given). Returns the Job.

    Raises:
        ValidationError, UnknownQueue: an invalid schedule (at declaration).
    """
    from ._job import Job

    # Check the schedule before declaring anything, so a bad schedule leaves no job behind.
    Schedule(name=name or "probe", job="probe", cron=cron, every=seconds(every), args=tuple(args),
             kwargs=dict(kwargs or {}), queue=queue)
    queues = owner.jobs.settings.jobs.queues
    if queue is not None and queue not in queues:
        raise UnknownQueue(f"schedule {name or ''}: unknown queue {queue!r}; configured queues: {', '.join(queues)}",
                           queue=queue)

    def decorator(fn: Callable[..., Any]) -> Job[Any, Any]:
        job = fn if isinstance(fn, Job) else owner.jobs.declare(fn, queue=queue)
        schedule_service(owner).declare(name, job=job.name, cron=cron, every=every, args=args,
                                        kwargs=kwargs, queue=queue)
        return job

    return decorator

