"""Job SLOs from the stored lifecycle events: exact percentiles over a window, with exemplars.

Unlike in-memory histograms, these figures are recomputed from durable
events, so they are exact (no bucket error) and survive restarts. Inputs are
the rows of the event store (``StoredEvent`` objects or mappings) with
``event_type`` ``job.started`` / ``job.succeeded`` / ``job.failed``, a
``correlation_id``, a time (``data["at"]`` in Unix seconds, else
``recorded_at``), and ``data`` holding ``job``, ``queue``, ``attempt``, and
``runtime_s`` (terminal events) or ``wait_s`` / ``started_at`` and
``enqueued_at`` (start events).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..errors import ValidationError
from ._buckets import ExponentialBuckets

#: Exemplars kept per slow bucket.
EXEMPLARS_PER_BUCKET = 5
#: Buckets of the exemplar view: 4 per doubling (each about 19 % wide).
EXEMPLAR_BUCKETS = ExponentialBuckets(4)
_TERMINAL = ("job.succeeded", "job.failed")


def _get(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(key)
    return getattr(row, key, None)


def _timestamp(row: Any, data: Mapping[str, Any]) -> float | None:
    at = data.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return float(at)
    for key in ("recorded_at", "timestamp", "time"):
        value = _get(row, key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _rank(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


def _summary(values: list[float], quantiles: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    values.sort()
    out: dict[str, Any] = {"count": len(values), "max": values[-1]}
    for q in quantiles:
        out[f"p{round(q * 100):d}"] = _rank(values, q)
    return out


def job_slos(
    events_rows: Iterable[Any],
    window: timedelta,
    *,
    now: float | None = None,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    slow_quantile: float = 0.9,
) -> dict[str, Any]:
    """Per-job percentiles of run time and queue wait over the last ``window``.

    Parameters
    ----------
    events_rows:
        Stored events (objects or mappings); rows of other types are ignored.
    window:
        How far back from ``now`` to look.
    now:
        End of the window (Unix seconds; default: the current time).
    quantiles:
        Quantiles to report; the rank of ``q`` over ``n`` values is ``floor(q*(n-1))``.
    slow_quantile:
        Runs at or above this quantile of a job's run time are grouped into buckets (4 per doubling)
        with up to :data:`EXEMPLARS_PER_BUCKET` correlation ids each, slowest first.

    Raises
    ------
    ValidationError
        When ``window`` is not positive or a quantile is outside [0, 1].

    Returns
    -------
    ``{"window_s", "from", "to", "jobs": {job: {"queues", "succeeded", "failed", "runtime_s": {count, max,
    p50, …}, "queue_wait_s": {…}, "slow": [{"le": seconds, "count": n, "correlation_ids": [...]}]}}}``.
    """
    seconds = window.total_seconds()
    if seconds <= 0:
        raise ValidationError("job_slos: window must be positive")
    if not all(0 <= q <= 1 for q in (*quantiles, slow_quantile)):
        raise ValidationError("job_slos: quantiles must be between 0 and 1")
    end = time.time() if now is None else now
    start = end - seconds
    jobs: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[tuple[float, str | None]]] = {}
    waits_started: dict[str, list[float]] = {}

    for row in events_rows:
        etype = _get(row, "event_type") or _get(row, "type")
        if etype != "job.started" and etype not in _TERMINAL:
            continue
        data = _get(row, "data") or {}
        if not isinstance(data, Mapping):
            continue
        ts = _timestamp(row, data)
        if ts is None or not start <= ts <= end:
            continue
        job = str(data.get("job") or "unknown")
        entry = jobs.setdefault(job, {"queues": set(), "succeeded": 0, "failed": 0})
        if data.get("queue"):
            entry["queues"].add(str(data["queue"]))
        if etype == "job.started":
            wait = _number(data.get("wait_s"))
            if wait is None:
                started, enqueued = _number(data.get("started_at")), _number(data.get("enqueued_at"))
                if started is not None and enqueued is not None:
                    wait = started - enqueued
            if wait is not None:
                waits_started.setdefault(job, []).append(max(0.0, wait))
            continue
        entry["succeeded" if etype == "job.succeeded" else "failed"] += 1
        runtime = _number(data.get("runtime_s"))
        if runtime is not None:
            runs.setdefault(job, []).append((max(0.0, runtime), _get(row, "correlation_id")))

    out: dict[str, Any] = {}
    for job, entry in sorted(jobs.items()):
        job_runs = runs.get(job, [])
        runtimes = [r for r, _ in job_runs]
        result: dict[str, Any] = {
            "queues": sorted(entry["queues"]),
            "succeeded": entry["succeeded"],
            "failed": entry["failed"],
            "runtime_s": _summary(runtimes, quantiles),
            "queue_wait_s": _summary(waits_started.get(job, []), quantiles),
            "slow": _exemplars(job_runs, slow_quantile),
        }
        out[job] = result
    return {"window_s": seconds, "from": start, "to": end, "jobs": out}


def _exemplars(job_runs: list[tuple[float, str | None]], slow_quantile: float) -> list[dict[str, Any]]:
    if not job_runs:
        return []
    threshold = _rank(sorted(r for r, _ in job_runs), slow_quantile)
    buckets: dict[int, list[tuple[float, str | None]]] = {}
    for runtime, cid in job_runs:
        if runtime >= threshold:
            buckets.setdefault(EXEMPLAR_BUCKETS.index(runtime), []).append((runtime, cid))
    out = []
    for idx in sorted(buckets, reverse=True):
        members = sorted(buckets[idx], key=lambda m: m[0], reverse=True)
        ids = []
        for _, cid in members:
            if cid and cid not in ids:
                ids.append(cid)
            if len(ids) == EXEMPLARS_PER_BUCKET:
                break
        out.append({"le": EXEMPLAR_BUCKETS.bounds(idx)[1], "count": len(members), "correlation_ids": ids})
    return out


class EventReader(Protocol):
    """The part of the event store :func:`iter_job_events` needs."""

    def head(self) -> int:
        """The last position."""

    def read_all(self, *, after_position: int = 0, limit: int = 1000) -> Sequence[Any]:
        """Events after a position, in position order."""


#: Slack (seconds) between commit order and ``recorded_at`` order when seeking the window's start.
SEEK_SLACK_S = 300.0


def iter_job_events(store: EventReader, since: float, *, page: int = 1000) -> Iterator[Any]:
    """Events recorded at or after ``since`` (Unix seconds, minus :data:`SEEK_SLACK_S`), paging through
    ``read_all``. The first position is found by binary search over positions (``recorded_at`` grows with
    position up to commit-order slack), so a short window does not read the whole store."""
    lo, hi = 0, store.head()
    target = since - SEEK_SLACK_S
    while lo < hi:
        mid = (lo + hi) // 2
        rows = store.read_all(after_position=mid, limit=1)
        ts = _timestamp(rows[0], _get(rows[0], "data") or {}) if rows else None
        if ts is None or ts >= target:
            hi = mid
        else:
            lo = mid + 1
    position = max(0, lo - 1)
    while True:
        rows = store.read_all(after_position=position, limit=page)
        if not rows:
            return
        yield from rows
        position = int(_get(rows[-1], "position"))
