"""Job rollups: per-minute run-time figures of every job and queue, computed from the job history.

``esf.telemetry.rollup`` (a service task on a default schedule) reads the ``job.succeeded`` and
``job.failed`` events of complete minutes and stores one :class:`MinuteRollup` per minute, job and
queue: the number of runs, the failures, the sum and maximum of the run times, the minute's exact
p50/p95/p99, and the run times' counts in fixed exponential buckets (``exp:8``, as the telemetry
histograms), which add up exactly across minutes. :func:`job_summaries` (``esf metrics jobs``)
reads those rows for the rolled-up minutes of a window and the raw events only for the tail not
rolled up yet, so a day is ~1,440 rows per job and queue instead of every event.

A minute belongs to the step time of its events (``data["at"]``). It is complete, and rolled up,
``settle_s`` after its end: the job history appends in batches, so an event is stored a little after
its step. An event stored later than that (a spool drained after a database outage) is found by
the next run, which looks at every terminal event stored since its previous run (after the event-store
position it kept: positions are commit-ordered, so none is skipped) and rolls the minutes of late ones
up again; a minute rolled again replaces its row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SettingsError, ValidationError
from ._buckets import ExponentialBuckets, quantiles
from ._slo import _get, _number, _rank, _timestamp

if TYPE_CHECKING:
    from ..events import EventStore

#: Name of the rollup backend in the ``esf.plugins`` entry-point group.
ENTRY_POINT = "rollups.sqlalchemy"
#: Seconds in a rolled-up period.
MINUTE_S = 60
#: Bucket layout of the stored run times (mergeable across minutes; quantile error ≤ 4.3 %).
ROLLUP_BUCKETS = ExponentialBuckets(8)
#: Percentiles stored per minute and reported per window.
ROLLUP_QUANTILES = (0.5, 0.95, 0.99)
#: Slack (seconds) for clocks: an event may be stored up to this long before its step time.
CLOCK_SKEW_S = 60.0
#: Events read per page.
PAGE_SIZE = 1000
_TERMINAL = ("job.succeeded", "job.failed")


@dataclass(frozen=True)
class MinuteRollup:
    """The finished runs of one job on one queue in one minute.

    Parameters:
        minute: the minute's start, Unix seconds (a multiple of 60).
        job, queue: the job's name and its queue (``""`` when the events name none).
        count: runs finished (``job.succeeded`` and ``job.failed``); failures: the ``job.failed`` ones.
        runtime_sum_s, runtime_max_s: sum and maximum of the run times (seconds).
        p50_s, p95_s, p99_s: exact percentiles of the minute's run times (rank ``floor(q*(n-1))``).
        buckets: ``{index: count}`` of the run times in :data:`ROLLUP_BUCKETS`.
    """

    minute: int
    job: str
    queue: str
    count: int
    failures: int
    runtime_sum_s: float
    runtime_max_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    buckets: Mapping[int, int] = field(default_factory=dict)


class RollupBackend(Protocol):
    """Where rollups are stored (``rollups.sqlalchemy``: the event store's database)."""

    def watermark(self) -> int | None:
        """The start of the last minute rolled up (Unix seconds), or None. Raises ServiceUnavailable."""

    def state(self) -> tuple[int | None, int | None]:
        """``(watermark, scanned_position)``: the last minute rolled up, and the event-store position up to
        which events were looked at for late ones; None before the first rollup. Raises ServiceUnavailable."""

    def write(self, rows: Sequence[MinuteRollup], *, through: int, drop_before: int | None = None,
              scanned_position: int | None = None) -> None:
        """Insert or replace ``rows``, raise the watermark to ``through`` and the scanned position to
        ``scanned_position`` (never lower either) and delete the rows of minutes before ``drop_before``,
        atomically. Raises ServiceUnavailable (nothing written)."""

    def read(self, start: int, end: int, *, job: str | None = None) -> list[MinuteRollup]:
        """Rows of the minutes ``start <= minute < end``. Raises ServiceUnavailable."""


def rollup_backend(store: EventStore) -> RollupBackend:
    """The rollup table of the event store ``store`` (``fnd.events``).

    Raises:
        SettingsError: the event store keeps no rollups (a store without a SQL engine).
        ServiceUnavailable: the database is unreachable.
    """
    from .._plugins import load_plugin

    engine = getattr(store, "engine", None)
    if engine is None:
        raise SettingsError("job rollups need the SQL event store (events.sqlalchemy)", setting="events")
    store.head()  # migrated before the first use
    backend: RollupBackend = load_plugin(ENTRY_POINT, setting="events")(engine)
    return backend


def _minute_of(ts: float) -> int:
    return int(ts // MINUTE_S) * MINUTE_S


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def job_events(store: EventStore, start: float, end: float, *, late_s: float | None) -> Iterator[Any]:
    """``job.succeeded``/``job.failed`` events whose step is at ``start <= t < end`` (Unix seconds), read
    through the ``recorded_at`` index from ``start -`` :data:`CLOCK_SKEW_S` to ``end + late_s`` (or the
    newest when ``late_s`` is None), one page of :data:`PAGE_SIZE` at a time."""
    from ..events import Q, Query

    stored_until = None if late_s is None else datetime.fromtimestamp(end + late_s, UTC)
    window = Q.types(*_TERMINAL) & Q.between(datetime.fromtimestamp(start - CLOCK_SKEW_S, UTC), stored_until)
    after: int | None = None
    while True:
        page = store.query(Query(window, order="asc", limit=PAGE_SIZE, after=after))
        for event in page:
            ts = _timestamp(event, event.data)
            if ts is not None and start <= ts < end:
                yield event
        if len(page) < PAGE_SIZE:
            return
        after = page[-1].position


def summarize(events: Iterable[Any]) -> list[MinuteRollup]:
    """One :class:`MinuteRollup` per minute, job and queue of ``events`` (terminal job events; others are
    skipped), ordered by minute, job and queue."""
    groups: dict[tuple[int, str, str], tuple[list[int], list[float]]] = {}
    for event in events:
        etype = _get(event, "event_type")
        data = _get(event, "data") or {}
        if etype not in _TERMINAL or not isinstance(data, Mapping):
            continue
        ts = _timestamp(event, data)
        if ts is None:
            continue
        key = (_minute_of(ts), str(data.get("job") or "unknown"), str(data.get("queue") or ""))
        counts, runtimes = groups.setdefault(key, ([0, 0], []))
        counts[0] += 1
        counts[1] += etype == "job.failed"
        runtime = _number(data.get("runtime_s"))
        if runtime is not None:
            runtimes.append(max(0.0, runtime))
    out = []
    for (minute, job, queue), ((count, failures), runtimes) in sorted(groups.items()):
        runtimes.sort()
        exact = [_rank(runtimes, q) if runtimes else None for q in ROLLUP_QUANTILES]
        buckets: dict[int, int] = {}
        for r in runtimes:
            index = ROLLUP_BUCKETS.index(r)
            buckets[index] = buckets.get(index, 0) + 1
        out.append(MinuteRollup(minute=minute, job=job, queue=queue, count=count, failures=failures,
                                runtime_sum_s=math.fsum(runtimes), runtime_max_s=runtimes[-1] if runtimes else None,
                                p50_s=exact[0], p95_s=exact[1], p99_s=exact[2], buckets=buckets))
    return out


def roll_up(store: EventStore, backend: RollupBackend, *, now: float, settle_s: float, max_minutes: int,
            first_s: float, retention_s: float | None = None, since: float | None = None) -> dict[str, Any]:
    """Roll up the complete minutes after the watermark (or from ``since``), at most ``max_minutes``, and
    roll up again every rolled-up minute that an event stored since the previous run belongs to although
    it was stored after the minute had been rolled up (a spool drained after an outage).

    Parameters:
        now: the current time (Unix seconds).
        settle_s: a minute is complete this long after its end.
        max_minutes: most new minutes rolled up in one call (the next call continues).
        first_s: with no watermark, start this long before ``now``.
        retention_s: delete the rows of minutes older than this (None: keep every row).
        since: roll up again from this time's minute (rows replaced; the watermark never goes back).

    Raises:
        ValidationError: a bad ``since``; ServiceUnavailable: the database is unreachable (nothing written).

    Returns:
        ``{"from", "through"`` (ISO minutes, or None when nothing new was due), ``"minutes", "late_minutes",
        "rows", "events", "behind_minutes"}`` (complete minutes still to roll up after this call).
    """
    complete_end = _minute_of(now - settle_s)  # every minute before it has ended settle_s ago
    mark: int | None = None
    scanned: int | None = None
    head: int | None = None
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since):
            raise ValidationError(f"since: must be Unix seconds, got {since!r}", errors={"since": "not a time"})
        start = _minute_of(since)
    else:
        mark, scanned = backend.state()
        head = store.head()  # every event at or below it is committed: the next late scan starts after it
        start = _minute_of(now - first_s) if mark is None else mark + MINUTE_S
    end = min(complete_end, start + max_minutes * MINUTE_S)
    seen = 0

    def counted(events: Iterable[Any]) -> Iterator[Any]:
        nonlocal seen
        for e in events:
            seen += 1
            yield e

    rows = summarize(counted(job_events(store, start, end, late_s=settle_s))) if end > start else []
    late: set[int] = set()
    if mark is not None and scanned is not None:
        late, last = late_minutes(store, after_position=scanned, before=mark + MINUTE_S, settle_s=settle_s)
        head = max(head or 0, last)
        if retention_s is not None:  # a minute past the retention is not brought back
            late = {m for m in late if m >= _minute_of(now - retention_s)}
    if late:
        again = job_events(store, min(late), max(late) + MINUTE_S, late_s=None)
        rows += summarize(counted(e for e in again if _minute_of(_timestamp(e, e.data) or 0.0) in late))
    if end <= start and not late:
        return {"from": None, "through": None, "minutes": 0, "late_minutes": 0, "rows": 0, "events": 0,
                "behind_minutes": 0}
    through = end - MINUTE_S if end > start else mark
    assert through is not None  # late minutes exist only after a first rollup
    backend.write(rows, through=through, drop_before=None if retention_s is None else _minute_of(now - retention_s),
                  scanned_position=head)
    new = end > start
    return {"from": _iso(start) if new else None, "through": _iso(end - MINUTE_S) if new else None,
            "minutes": max(0, (end - start) // MINUTE_S), "late_minutes": len(late), "rows": len(rows),
            "events": seen, "behind_minutes": max(0, (complete_end - max(end, start)) // MINUTE_S)}


def late_minutes(store: EventStore, *, after_position: int, before: int, settle_s: float) -> tuple[set[int], int]:
    """Minutes before ``before`` (rolled up already) of the terminal job events after ``after_position``
    that were stored more than ``settle_s`` after their minute's end (their rows miss those events), and
    the last position seen. Positions are commit-ordered, so no event is looked at twice or skipped."""
    from ..events import Q, Query

    window = Q.types(*_TERMINAL)
    out: set[int] = set()
    after = after_position
    while True:
        page = store.query(Query(window, order="asc", limit=PAGE_SIZE, after=after))
        for event in page:
            ts = _timestamp(event, event.data)
            if ts is None:
                continue
            minute = _minute_of(ts)
            if minute < before and event.recorded_at.timestamp() > minute + MINUTE_S + settle_s:
                out.add(minute)
        if page:
            after = page[-1].position
        if len(page) < PAGE_SIZE:
            return out, after


def job_summaries(store: EventStore, backend: RollupBackend | None, *, window_s: float, now: float,
                  job: str | None = None) -> dict[str, Any]:
    """Per job and queue over the minutes from ``now - window_s`` (rounded down to its minute) to ``now``:
    runs, failures, failure rate and run-time percentiles.

    Rolled-up minutes come from ``backend`` (None: every figure from raw events); the minutes after the
    watermark from raw events. Percentiles merge the ``exp:8`` buckets of every minute, so they are
    within 4.3 % of the exact value (each minute's exact figures are in its row).

    Raises:
        ValidationError: ``window_s`` not > 0; ServiceUnavailable: the database is unreachable.

    Returns:
        ``{"from", "to", "window_s", "rolled_through", "rollup_rows", "raw_events", "jobs": [{"job", "queue",
        "count", "failures", "failure_rate", "runtime_s": {"count", "sum", "max", "p50", "p95", "p99"}}]}``.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not window_s > 0:
        raise ValidationError(f"window: must be > 0 seconds, got {window_s!r}", errors={"window": "not > 0"})
    start = _minute_of(now - window_s)
    mark = backend.watermark() if backend is not None else None
    rolled_end = start if mark is None else max(start, min(mark + MINUTE_S, _minute_of(now)))
    rows: list[MinuteRollup] = []
    if backend is not None and rolled_end > start:
        rows = backend.read(start, rolled_end, job=job)
    tail = summarize(job_events(store, rolled_end, now, late_s=None))
    if job is not None:
        tail = [r for r in tail if r.job == job]
    merged: dict[tuple[str, str], list[Any]] = {}
    for r in (*rows, *tail):
        entry = merged.setdefault((r.job, r.queue), [0, 0, [], None, {}])
        entry[0] += r.count
        entry[1] += r.failures
        entry[2].append(r.runtime_sum_s)
        if r.runtime_max_s is not None:
            entry[3] = r.runtime_max_s if entry[3] is None else max(entry[3], r.runtime_max_s)
        for index, n in r.buckets.items():
            entry[4][index] = entry[4].get(index, 0) + n
    jobs = []
    for (name, queue), (count, failures, sums, most, buckets) in sorted(merged.items()):
        qs = quantiles([(ROLLUP_BUCKETS, buckets)], ROLLUP_QUANTILES)
        runtime: dict[str, Any] = {"count": sum(buckets.values()), "sum": math.fsum(sums), "max": most}
        runtime.update({f"p{round(q * 100)}": qs[q] for q in ROLLUP_QUANTILES})
        jobs.append({"job": name, "queue": queue, "count": count, "failures": failures,
                     "failure_rate": failures / count if count else 0.0, "runtime_s": runtime})
    return {"from": _iso(start), "to": _iso(now), "window_s": now - start,
            "rolled_through": None if mark is None else _iso(mark), "rollup_rows": len(rows),
            "raw_events": sum(r.count for r in tail), "jobs": jobs}
