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
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._json import check_json, dumps
from .._sqlite import SqliteFile
from ..errors import ConcurrencyConflict, Conflict, NotFound, ServiceUnavailable, UnknownQueue, ValidationError
from ._options import JOB_NAME_RE

log = logging.getLogger("esf.beat")

if TYPE_CHECKING:
    import redis

    from ..foundation import Foundation
    from ._job import Job

__all__ = [
    "RedisScheduleStore",
    "Schedule",
    "ScheduleService",
    "ScheduleStore",
    "SqliteScheduleStore",
    "StoredRecord",
    "next_cron_time",
    "parse_cron",
    "schedule_decorator",
    "schedule_service",
]

#: Schedule names: dotted identifiers (like job names), at most 200 characters.
MAX_SCHEDULE_NAME = 200
#: Fields ``ScheduleService.update`` may change.
UPDATABLE = frozenset({"job", "cron", "every", "args", "kwargs", "queue", "enabled"})
_TIMING = ("cron", "every")
#: Years searched for a cron occurrence (``0 0 29 2 1``, a Monday 29 February, recurs within 28 years).
CRON_SEARCH_YEARS = 29

Origin = Literal["code", "runtime"]


# -- cron ------------------------------------------------------------------------------------------


def parse_cron(expr: str) -> Any:
    """Parse a 5-field crontab string (``minute hour day-of-month month day-of-week``) with Celery's ``crontab``.

    Raises:
        ValidationError: the expression is malformed (``errors["cron"]`` says why).
    Returns:
        the ``celery.schedules.crontab``.
    """
    from celery.schedules import crontab

    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != 5:
        raise ValidationError(f"cron: {expr!r} is not a 5-field crontab ('minute hour day-of-month month "
                              "day-of-week', e.g. '*/5 * * * *')", errors={"cron": "expected 5 fields"})
    try:
        return crontab(minute=fields[0], hour=fields[1], day_of_month=fields[2], month_of_year=fields[3],
                       day_of_week=fields[4])
    except Exception as exc:  # celery raises ValueError, TypeError or IndexError for bad fields
        raise ValidationError(f"cron: {expr!r} is not a valid crontab: {exc}", errors={"cron": str(exc)}) from None


def next_cron_time(cron: Any, after: datetime) -> datetime:
    """The first minute strictly after ``after`` (UTC) that matches ``cron`` (a parsed crontab).

    Celery's semantics: the day of the month *and* the day of the week must both
    match (Vixie cron uses *or* when both are restricted). Sunday is 0.

    Raises:
        ValidationError: the expression never matches within :data:`CRON_SEARCH_YEARS` years.
    """
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    minutes, hours = sorted(cron.minute), sorted(cron.hour)
    limit = t + timedelta(days=366 * CRON_SEARCH_YEARS)
    while t < limit:
        if t.month not in cron.month_of_year:
            t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
            continue
        if t.day not in cron.day_of_month or t.isoweekday() % 7 not in cron.day_of_week:
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
            continue
        for h in hours:
            if h < t.hour:
                continue
            first = t.minute if h == t.hour else 0
            m = next((m for m in minutes if m >= first), None)
            if m is not None:
                return t.replace(hour=h, minute=m)
        t = t.replace(hour=0, minute=0) + timedelta(days=1)
    raise ValidationError(f"cron: never matches within {CRON_SEARCH_YEARS} years", errors={"cron": "never matches"})


# -- the value ------------------------------------------------------------------------------------


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
                   next_run_at=_dt(record.next_run_at), last_run_at=_dt(record.last_run_at))


def seconds(every: float | timedelta | None) -> float | None:
    """``every`` in seconds (a ``timedelta`` is converted; anything else is left for validation)."""
    return every.total_seconds() if isinstance(every, timedelta) else every


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def utcnow() -> datetime:
    """Now in UTC, to the millisecond (so interval grids and occurrence ids are exact milliseconds)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRecord:
    """One schedule as stored: its definition (JSON text), revision and run state (epoch seconds)."""

    name: str
    definition: str
    revision: int
    last_run_at: float | None
    next_run_at: float | None


#: ``expected`` of :meth:`ScheduleStore.put`: the record must not exist / may be anything.
ABSENT: int = 0
ANY: int = -1


class ScheduleStore(Protocol):
    """Where schedules live. Every method is atomic across processes."""

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        """Write a definition with a new revision if the current one is ``expected``
        (:data:`ABSENT`: must not exist; :data:`ANY`: whatever it is). ``run`` is ``(last, next)`` to
        write, or None to keep the stored run state. Returns the new revision, or 0 on a conflict."""

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        """Write the run state if the revision is still ``revision``; False otherwise."""

    def delete(self, name: str) -> bool:
        """Remove a schedule; False when it did not exist."""

    def get(self, name: str) -> StoredRecord | None:
        """One schedule, or None."""

    def load(self) -> list[StoredRecord]:
        """Every schedule (one consistent snapshot)."""


_PUT_LUA = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[3] == '0' then
  if cur then return 0 end
elseif ARGV[3] ~= '-1' then
  if cur ~= ARGV[3] then return 0 end
end
local rev = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[2], ARGV[1], rev)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return rev
"""

_RUN_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

_DEL_LUA = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""


class RedisScheduleStore:
    """Schedules in Redis: hashes ``esf:schedules:defs``, ``…:revs`` and ``…:runs``, keyed by name."""

    def __init__(self, client: redis.Redis[bytes] | Callable[[], redis.Redis[bytes]],
                 prefix: str = "esf:schedules:") -> None:
        # A callable is asked for the client on every call, so a forked process uses its own connection.
        self._client: Callable[[], redis.Redis[bytes]] = client if callable(client) else (lambda: client)
        self._keys = [prefix + "defs", prefix + "revs", prefix + "runs", prefix + "rev-seq"]
        self._scripts: dict[str, Any] = {}

    @property
    def _r(self) -> redis.Redis[bytes]:
        return self._client()

    def _script(self, text: str, keys: list[str], args: list[Any]) -> Any:
        client = self._r
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = client.register_script(text)
        return self._call(script, keys=keys, args=args, client=client)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis as _redis

        try:
            return fn(*args, **kwargs)
        except _redis.RedisError as exc:
            raise ServiceUnavailable(f"the schedule store (Redis) failed: {type(exc).__name__}: {exc}") from exc

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        run_text = "" if run is None else json.dumps(list(run))
        return int(self._script(_PUT_LUA, self._keys, [name, definition, expected, run_text]))

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        return bool(self._script(_RUN_LUA, self._keys[1:3], [name, revision, json.dumps([last, next_])]))

    def delete(self, name: str) -> bool:
        return bool(self._script(_DEL_LUA, self._keys[:3], [name]))

    def _record(self, name: str, definition: bytes | None, rev: bytes | None, run: bytes | None) -> StoredRecord | None:
        if definition is None or rev is None:
            return None
        last, next_ = json.loads(run) if run else (None, None)
        return StoredRecord(name, definition.decode(), int(rev), last, next_)

    def get(self, name: str) -> StoredRecord | None:
        pipe = self._r.pipeline(transaction=True)
        for key in self._keys[:3]:
            pipe.hget(key, name)
        d, r, run = self._call(pipe.execute)
        return self._record(name, d, r, run)

    def load(self) -> list[StoredRecord]:
        pipe = self._r.pipeline(transaction=True)
        for key in self._keys[:3]:
            pipe.hgetall(key)
        defs, revs, runs = self._call(pipe.execute)
        out = []
        for raw_name, d in defs.items():
            rec = self._record(raw_name.decode(), d, revs.get(raw_name), runs.get(raw_name))
            if rec is not None:
                out.append(rec)
        return out


class SqliteScheduleStore(SqliteFile):
    """Schedules in one SQLite file (the embedded deployment: every process on one machine)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the schedule store")
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS esf_schedules (name TEXT PRIMARY KEY, definition TEXT NOT NULL,"
                       " revision INTEGER NOT NULL, last_run_at REAL, next_run_at REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS esf_schedule_seq (id INTEGER PRIMARY KEY AUTOINCREMENT)")

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        with self._tx() as db:
            row = db.execute("SELECT revision FROM esf_schedules WHERE name = ?", (name,)).fetchone()
            if (expected == ABSENT and row is not None) or (expected not in (ABSENT, ANY)
                                                             and (row is None or row[0] != expected)):
                return 0
            rev = int(db.execute("INSERT INTO esf_schedule_seq DEFAULT VALUES").lastrowid or 0)
            db.execute("DELETE FROM esf_schedule_seq WHERE id < ?", (rev,))
            if row is None:
                last, next_ = run or (None, None)
                db.execute("INSERT INTO esf_schedules VALUES (?, ?, ?, ?, ?)", (name, definition, rev, last, next_))
            elif run is None:
                db.execute("UPDATE esf_schedules SET definition = ?, revision = ? WHERE name = ?",
                           (definition, rev, name))
            else:
                db.execute("UPDATE esf_schedules SET definition = ?, revision = ?, last_run_at = ?, next_run_at = ?"
                           " WHERE name = ?", (definition, rev, run[0], run[1], name))
            return rev

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE esf_schedules SET last_run_at = ?, next_run_at = ? WHERE name = ? AND"
                             " revision = ?", (last, next_, name, revision))
            return cur.rowcount == 1

    def delete(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM esf_schedules WHERE name = ?", (name,)).rowcount == 1

    def get(self, name: str) -> StoredRecord | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT name, definition, revision, last_run_at, next_run_at FROM esf_schedules"
                             " WHERE name = ?", (name,)).fetchone()
        return None if row is None else StoredRecord(*row)

    def load(self) -> list[StoredRecord]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT name, definition, revision, last_run_at, next_run_at FROM esf_schedules"
                              " ORDER BY name").fetchall()
        return [StoredRecord(*row) for row in rows]



# -- the service ----------------------------------------------------------------------------------

#: Attempts of a read-modify-write before ``update`` gives up with ConcurrencyConflict.
UPDATE_ATTEMPTS = 10


class ScheduleService:
    """Schedules of one Foundation (``fnd.jobs.schedules``): add, change and remove them at run time,
    and the schedules declared in code (``@fnd.schedule``), written to the store when beat starts.

    Parameters:
        foundation: the Foundation whose jobs, queues and settings schedules are checked against.
        store: the store (default: Redis when ``effective_redis_url`` is set, else SQLite under ``data_dir``).
    """

    def __init__(self, foundation: Foundation, store: ScheduleStore | None = None) -> None:
        self._fnd = foundation
        self._store = store
        self._declared: dict[str, Schedule] = {}
        self._retired: set[str] = set()
        self._parsed: dict[str, tuple[int, str, Schedule]] = {}

    @property
    def store(self) -> ScheduleStore:
        if self._store is None:
            if self._fnd.settings.effective_redis_url:
                fnd = self._fnd
                self._store = RedisScheduleStore(lambda: fnd.redis)
            else:
                self._store = SqliteScheduleStore(self._fnd.settings.data_path / "schedules.sqlite")
        return self._store

    # -- checks -----------------------------------------------------------

    def check(self, schedule: Schedule, *, require_job: bool = True) -> None:
        """Check a schedule against this deployment.

        Raises:
            UnknownJob: the job is not declared in this Foundation (``require_job``).
            UnknownQueue: the queue is not configured.
        """
        queues = self._fnd.settings.jobs.queues
        if schedule.queue is not None and schedule.queue not in queues:
            raise UnknownQueue(f"schedule {schedule.name}: unknown queue {schedule.queue!r}; configured queues: "
                               f"{', '.join(queues)}", queue=schedule.queue)
        if require_job:
            self._fnd.jobs.get(schedule.job)

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
                object.__setattr__(schedule, "last_run_at", _dt(record.last_run_at))
                object.__setattr__(schedule, "next_run_at", _dt(record.next_run_at))
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
        run = (None, _ts(schedule.first_run_after(utcnow())))
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
            run = (_ts(current.last_run_at), _ts(dataclasses.replace(new, last_run_at=current.last_run_at)
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
        return self.store.record_run(schedule.name, schedule.revision, _ts(last), _ts(next_))


def schedule_service(foundation: Foundation) -> ScheduleService:
    """The Foundation's schedule service (``fnd.jobs.schedules`` once the Foundation exposes it)."""
    jobs = foundation.jobs
    if hasattr(type(jobs), "schedules"):
        service: ScheduleService = jobs.schedules  # type: ignore[attr-defined]
        return service
    existing = jobs.__dict__.get("_esf_schedules")
    if existing is None:
        existing = jobs.__dict__["_esf_schedules"] = ScheduleService(foundation)
    return existing  # type: ignore[no-any-return]


def schedule_decorator(foundation: Foundation, name: str | None = None, *, cron: str | None = None,
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
    queues = foundation.settings.jobs.queues
    if queue is not None and queue not in queues:
        raise UnknownQueue(f"schedule {name or ''}: unknown queue {queue!r}; configured queues: {', '.join(queues)}",
                           queue=queue)

    def decorator(fn: Callable[..., Any]) -> Job[Any, Any]:
        job = fn if isinstance(fn, Job) else foundation.jobs.declare(fn, queue=queue)
        schedule_service(foundation).declare(name, job=job.name, cron=cron, every=every, args=args,
                                             kwargs=kwargs, queue=queue)
        return job

    return decorator

