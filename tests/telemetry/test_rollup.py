"""`esf.telemetry.rollup` and `esf metrics jobs`: per-minute rollups agree with the raw job history."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import esf
from esf.errors import ServiceUnavailable, ValidationError
from esf.events import Event
from esf.foundation import Foundation
from esf.telemetry import job_summaries
from esf.telemetry._rollup import MINUTE_S, rollup_backend

#: Settings of the rollup under test: complete 120 s after its end, at most 3 minutes per run.
SETTLE_S = 120


@pytest.fixture(params=["postgresql", "sqlite"])
def fnd(request: pytest.FixtureRequest, data_dir: Path, tmp_path: Path) -> Iterator[Foundation]:
    url = (str(request.getfixturevalue("pg_url")) if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'events.sqlite'}")
    f = Foundation(esf.Settings.from_env({
        "ESF_DATA_DIR": str(data_dir), "ESF_DATABASE_URL": url,
        "ESF_SERVICES_TELEMETRY_ROLLUP_SETTLE_S": str(SETTLE_S), "ESF_SERVICES_TELEMETRY_ROLLUP_MAX_MINUTES": "3",
        "ESF_SERVICES_TELEMETRY_ROLLUP_FIRST_S": "900"}))
    try:
        yield f
    finally:
        f.close()


def history(fnd: Foundation, now: float, seed: int = 7) -> dict[tuple[int, str, str], list[tuple[float, bool]]]:
    """Terminal job events over the last 10 minutes (two jobs, one on two queues), stored now; returns the
    runs per (minute, job, queue) as (run time, failed)."""
    rng = random.Random(seed)
    runs: dict[tuple[int, str, str], list[tuple[float, bool]]] = {}
    batch = []
    for i in range(600):
        at = now - 600 + i + rng.random()
        job, queue = rng.choice([("email", "default"), ("email", "bulk"), ("charge", "payments")])
        runtime, failed = rng.lognormvariate(-2, 1.2), rng.random() < 0.1
        runs.setdefault((int(at // 60) * 60, job, queue), []).append((runtime, failed))
        batch.append(Event(type="job.failed" if failed else "job.succeeded", stream_id=f"job-r{i}",
                           correlation_id=f"c{i}",
                           data={"job": job, "queue": queue, "attempt": 1, "at": at, "runtime_s": runtime}))
    stored = fnd.events.append(batch)
    # As if each event had been stored when its step happened (the job history appends within seconds)
    import sqlalchemy as sa
    from esf.plugins.sqlalchemy_events._schema import events

    with fnd.events.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.update(events).where(events.c.position == sa.bindparam("p"))
                     .values(recorded_at=sa.bindparam("t")),
                     [{"p": e.position, "t": datetime.fromtimestamp(e.data["at"] + 2, UTC)} for e in stored])
    return runs


def roll(fnd: Foundation, since: float | None = None) -> dict[str, object]:
    result: dict[str, object] = fnd.jobs.get("esf.telemetry.rollup")(since=since)
    return result


def test_rollups_agree_with_the_raw_events_and_hold_each_minute_s_exact_percentiles(fnd: Foundation) -> None:
    # Given ten minutes of job history, the last two not complete yet (they ended less than 120 s ago)
    now = time.time()
    runs = history(fnd, now)
    backend = rollup_backend(fnd.events)
    # When the rollup runs until it has caught up (at most 3 minutes a run, from 15 minutes back)
    results = [roll(fnd)]
    while results[-1]["behind_minutes"]:
        results.append(roll(fnd))
    # Then each run was bounded, they resumed from one another, and only complete minutes were rolled up
    assert [r["minutes"] for r in results] == [3] * (len(results) - 1) + [results[-1]["minutes"]]
    assert all(int(r["minutes"]) <= 3 for r in results)
    # (the runs read the clock themselves: a minute may have become complete since ``now``)
    end = time.time()
    mark = backend.watermark()
    assert mark is not None and mark + MINUTE_S <= end - SETTLE_S and now - SETTLE_S < mark + 2 * MINUTE_S
    assert roll(fnd)["minutes"] == 0
    # And each row holds its minute's count, failures and exact percentiles (rank floor(q*(n-1)))
    rows = backend.read(0, 2**40)
    assert rows and {(r.minute, r.job, r.queue) for r in rows} == {k for k in runs if k[0] <= mark}
    for r in rows:
        times = sorted(t for t, _ in runs[(r.minute, r.job, r.queue)])
        assert (r.count, r.failures) == (len(times), sum(f for _, f in runs[(r.minute, r.job, r.queue)]))
        assert (r.p50_s, r.p95_s, r.p99_s) == tuple(times[math.floor(q * (len(times) - 1))] for q in (.5, .95, .99))
        assert r.runtime_max_s == times[-1] and sum(r.buckets.values()) == len(times)
    # And over the window, the figures from rollups plus the raw tail equal those from the raw events alone
    from_rollups = job_summaries(fnd.events, backend, window_s=900, now=now)
    from_raw = job_summaries(fnd.events, None, window_s=900, now=now)
    assert from_rollups["rollup_rows"] == len(rows) and from_raw["rollup_rows"] == 0
    assert from_rollups["raw_events"] == sum(len(v) for k, v in runs.items() if k[0] > mark) < 600
    assert from_rollups["jobs"] == from_raw["jobs"]
    email = next(j for j in from_rollups["jobs"] if (j["job"], j["queue"]) == ("email", "bulk"))
    times = sorted(t for k, v in runs.items() if k[1:] == ("email", "bulk") for t, _ in v)
    assert email["count"] == len(times)
    # (the window's percentiles merge fixed buckets: within 4.3 % of the exact value)
    assert email["runtime_s"]["p95"] == pytest.approx(times[math.floor(0.95 * (len(times) - 1))], rel=0.044)


def test_rolling_a_minute_again_replaces_its_row_with_the_same_figures_and_keeps_the_watermark(
        fnd: Foundation) -> None:
    # Given rolled-up history
    now = time.time()
    history(fnd, now)
    while roll(fnd)["behind_minutes"]:
        pass
    backend = rollup_backend(fnd.events)
    mark, before = backend.watermark(), backend.read(0, 2**40)
    # And a row of the first minute of history spoiled behind the rollup's back
    import sqlalchemy as sa
    from esf.plugins.sqlalchemy_events._schema import job_rollups

    first = min(r.minute for r in before)
    with fnd.events.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.update(job_rollups).where(job_rollups.c.minute == first).values(count=999, p95_s=0.0))
    assert backend.read(0, 2**40) != before
    # When the rollup runs again from that minute (3 minutes: the run's bound)
    again = roll(fnd, since=first)
    # Then it rewrote those minutes with the rows computed the first time, and the watermark did not move back
    assert again["from"] == datetime.fromtimestamp(first, UTC).isoformat() and int(again["rows"]) > 0
    assert backend.read(0, 2**40) == before
    assert backend.watermark() == mark


def test_a_bad_since_or_window_is_refused_and_the_rollup_reports_an_unreachable_database(
        data_dir: Path, tmp_path: Path) -> None:
    # Given an event store whose database does not answer
    down = Foundation(esf.Settings.from_env({"ESF_DATA_DIR": str(data_dir),
                                             "ESF_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}))
    try:
        # Then the rollup raises ServiceUnavailable (retried, then dead-lettered on esf.telemetry.dlq)
        with pytest.raises(ServiceUnavailable):
            roll(down)
    finally:
        down.close()
    up = Foundation(esf.Settings.from_env({"ESF_DATA_DIR": str(data_dir),
                                           "ESF_DATABASE_URL": f"sqlite:///{tmp_path / 'e.sqlite'}"}))
    try:
        with pytest.raises(ValidationError):
            roll(up, since="yesterday")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            job_summaries(up.events, None, window_s=0, now=time.time())
        assert rollup_backend(up.events).watermark() is None
    finally:
        up.close()


def test_esf_metrics_jobs_prints_rollups_and_the_tail(fnd: Foundation, capsys: pytest.CaptureFixture[str]) -> None:
    from esf.cli._metrics import show_job_summaries

    now = time.time()
    history(fnd, now)
    while roll(fnd)["behind_minutes"]:
        pass
    assert show_job_summaries(fnd, timedelta(minutes=15), job="charge", as_json=True, now=now) == 0
    data = json.loads(capsys.readouterr().out)
    assert [j["job"] for j in data["jobs"]] == ["charge"] and data["rollup_rows"] > 0
    assert show_job_summaries(fnd, timedelta(minutes=15), now=now) == 0
    out = capsys.readouterr().out
    assert "email" in out and "bulk" in out and "rolled-up rows" in out


def test_a_rollup_run_deletes_the_rows_older_than_the_retention_and_keeps_the_others(fnd: Foundation) -> None:
    from esf.telemetry import MinuteRollup

    # Given rolled-up history and two rows of long ago: 91 and 89 days (the retention is 90 days)
    now = time.time()
    history(fnd, now)
    while roll(fnd)["behind_minutes"]:
        pass
    backend = rollup_backend(fnd.events)
    mark = backend.watermark()
    assert mark is not None and fnd.settings.services.telemetry_rollup_retention_s == 90 * 86400
    old = [MinuteRollup(minute=int((now - days * 86400) // 60 * 60), job="old", queue="", count=1, failures=0,
                        runtime_sum_s=1.0, runtime_max_s=1.0, p50_s=1.0, p95_s=1.0, p99_s=1.0, buckets={0: 1})
           for days in (91, 89)]
    backend.write(old, through=mark)
    recent = [r for r in backend.read(0, 2**40) if r.job != "old"]
    # When the rollup runs (here rolling its last minutes again)
    roll(fnd, since=mark - 60)
    # Then the 91-day-old row is gone, and the 89-day-old one and the recent ones are kept
    assert [r for r in backend.read(0, 2**40) if r.job == "old"] == [old[1]]
    assert [r for r in backend.read(0, 2**40) if r.job != "old"] == recent


def test_an_event_stored_after_its_minute_was_rolled_up_is_added_by_the_next_run(fnd: Foundation) -> None:
    # Given rolled-up history
    now = time.time()
    history(fnd, now)
    while roll(fnd)["behind_minutes"]:
        pass
    backend = rollup_backend(fnd.events)
    first = min(r.minute for r in backend.read(0, 2**40))
    before = {(r.minute, r.job, r.queue): r for r in backend.read(0, 2**40)}
    # When a run of that first minute is stored only now (a spool drained after a database outage)
    fnd.events.append([Event(type="job.failed", stream_id="job-late", correlation_id="late",
                             data={"job": "charge", "queue": "payments", "attempt": 1, "at": first + 30.0,
                                   "runtime_s": 9.5})])
    # Then the next run rolls that minute up again, with the late run in it, and nothing else changes
    result = roll(fnd)
    assert result["late_minutes"] == 1 and result["minutes"] == 0
    after = {(r.minute, r.job, r.queue): r for r in backend.read(0, 2**40)}
    key = (first, "charge", "payments")
    count, failures = (before[key].count, before[key].failures) if key in before else (0, 0)
    assert (after[key].count, after[key].failures, after[key].runtime_max_s) == (count + 1, failures + 1, 9.5)
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}
    # And the rolled-up figures agree with the raw events again; a further run finds nothing late
    later = time.time()
    assert (job_summaries(fnd.events, backend, window_s=900, now=later)["jobs"]
            == job_summaries(fnd.events, None, window_s=900, now=later)["jobs"])
    assert roll(fnd)["late_minutes"] == 0
