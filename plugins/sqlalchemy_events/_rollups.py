"""Job rollups in the event store's database: per-minute run-time figures and the rollup's watermark."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from esf.telemetry import MinuteRollup

from ._engine import connect_write, is_unreachable, unavailable
from ._read_timeout import long_calls
from ._schema import job_rollup_state, job_rollups

#: The watermark's row in ``esf_job_rollup_state``.
WATERMARK = "jobs"
#: The row of the event-store position up to which events were looked at for late ones.
SCANNED = "jobs.scanned_position"
_KEY = ("minute", "job", "queue")


class SqlJobRollups:
    """Per-minute job figures (:class:`~esf.telemetry.MinuteRollup`) in ``esf_job_rollups`` (PostgreSQL, SQLite).

    Parameters:
        engine: the event store's engine (its tables exist: the store migrated them).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    def _run(self, work: Any, *, write: bool) -> Any:
        try:
            if write:
                # A rollup scans the events of its minutes: as long as the statement timeout allows.
                with connect_write(self.engine) as conn, long_calls(conn):
                    return work(conn)
            with self.engine.connect() as conn, long_calls(conn):
                return work(conn)
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            if is_unreachable(exc):
                raise unavailable(exc, str(self.engine.url)) from exc
            raise

    def watermark(self) -> int | None:
        """The start (Unix seconds) of the last minute rolled up, or None before the first rollup.

        Raises:
            ServiceUnavailable: the database is unreachable.
        """
        stmt = sa.select(job_rollup_state.c.minute).where(job_rollup_state.c.name == WATERMARK)
        value = self._run(lambda conn: conn.execute(stmt).scalar_one_or_none(), write=False)
        return None if value is None else int(value)

    def state(self) -> tuple[int | None, int | None]:
        """``(watermark, scanned_position)`` (see :meth:`esf.telemetry.RollupBackend.state`).

        Raises:
            ServiceUnavailable: the database is unreachable.
        """
        stmt = sa.select(job_rollup_state.c.name, job_rollup_state.c.minute).where(
            job_rollup_state.c.name.in_((WATERMARK, SCANNED)))
        found = dict(self._run(lambda conn: conn.execute(stmt).all(), write=False))
        mark, scanned = found.get(WATERMARK), found.get(SCANNED)
        return (None if mark is None else int(mark), None if scanned is None else int(scanned))

    def write(self, rows: Sequence[MinuteRollup], *, through: int, drop_before: int | None = None,
              scanned_position: int | None = None) -> None:
        """Insert or replace ``rows`` (by minute, job and queue), move the watermark up to ``through`` and the
        scanned position up to ``scanned_position`` (never down) and delete the rows of minutes before
        ``drop_before`` (retention), in one transaction.

        Raises:
            ServiceUnavailable: the database is unreachable (nothing is written).
        """
        now = datetime.now(UTC)

        def work(conn: sa.Connection) -> None:
            if drop_before is not None:
                conn.execute(sa.delete(job_rollups).where(job_rollups.c.minute < drop_before))
            if rows:
                stmt = self._insert(job_rollups)
                stmt = stmt.on_conflict_do_update(
                    index_elements=list(_KEY),
                    set_={c.name: stmt.excluded[c.name] for c in job_rollups.columns if c.name not in _KEY})
                conn.execute(stmt, [_to_row(r, now) for r in rows])
            for name, value in ((WATERMARK, through), (SCANNED, scanned_position)):
                if value is None:
                    continue
                mark = self._insert(job_rollup_state).values(name=name, minute=value, updated_at=now)
                current = job_rollup_state.c.minute
                conn.execute(mark.on_conflict_do_update(index_elements=["name"], set_={
                    "minute": sa.case((current > mark.excluded.minute, current), else_=mark.excluded.minute),
                    "updated_at": mark.excluded.updated_at}))

        self._run(work, write=True)

    def read(self, start: int, end: int, *, job: str | None = None) -> list[MinuteRollup]:
        """The rows of the minutes ``start <= minute < end`` (Unix seconds), of one job or all, by minute.

        Raises:
            ServiceUnavailable: the database is unreachable.
        """
        stmt = sa.select(job_rollups).where(job_rollups.c.minute >= start, job_rollups.c.minute < end)
        if job is not None:
            stmt = stmt.where(job_rollups.c.job == job)
        stmt = stmt.order_by(*(job_rollups.c[k] for k in _KEY))
        return self._run(lambda conn: [_from_row(r._mapping) for r in conn.execute(stmt)], write=False)  # type: ignore[no-any-return]


def _to_row(r: MinuteRollup, now: datetime) -> dict[str, Any]:
    return {"minute": r.minute, "job": r.job, "queue": r.queue, "count": r.count, "failures": r.failures,
            "runtime_sum_s": r.runtime_sum_s, "runtime_max_s": r.runtime_max_s, "p50_s": r.p50_s,
            "p95_s": r.p95_s, "p99_s": r.p99_s, "buckets": {str(k): v for k, v in r.buckets.items()},
            "updated_at": now}


def _from_row(m: Any) -> MinuteRollup:
    return MinuteRollup(minute=int(m["minute"]), job=m["job"], queue=m["queue"], count=int(m["count"]),
                        failures=int(m["failures"]), runtime_sum_s=float(m["runtime_sum_s"]),
                        runtime_max_s=m["runtime_max_s"], p50_s=m["p50_s"], p95_s=m["p95_s"], p99_s=m["p99_s"],
                        buckets={int(k): int(v) for k, v in (m["buckets"] or {}).items()})
