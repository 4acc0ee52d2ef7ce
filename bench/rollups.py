"""`esf metrics jobs` over a day: per-minute rollups plus the raw tail, against reading every event.

    python bench/rollups.py [--quick] [--json] [-n EVENTS] [--runs R]

Loads ``n`` ``job.succeeded``/``job.failed`` events spread over the last 24 hours (10 jobs,
2 queues each, stored as they happened) into a fresh PostgreSQL database, rolls them up with
``esf.telemetry.rollup``'s function (timed: the catch-up of a whole day), then times, alternating
sample by sample, three ways of answering "per job and queue over the last day":

- ``rollups``: ``job_summaries`` with the rollup table (what ``esf metrics jobs`` runs): the rows of
  the rolled-up minutes and the raw events of the minutes not rolled up yet;
- ``raw``: ``job_summaries`` without rollups (the same figures from every event);
- ``exact``: ``job_slos`` over every event (``esf metrics jobs --exact``, what it did before rollups).

Figures are milliseconds per answer (median over runs) and rows read; the last line is the
headline: how many times faster the rollup answer is than the exact one (``--exact``).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _common import Report, parse_args

ADMIN_URL = os.environ.get("ESF_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DAY_S = 86_400.0
JOBS = [(f"app.job{j}", q) for j in range(10) for q in ("default", "bulk")]


def load(fnd: object, url: str, n: int, now: float) -> None:
    """``n`` terminal job events over the last day, then ``recorded_at`` set to each step's time."""
    from esf.events import Event

    rng = random.Random(1)
    batch = []
    for i in range(n):
        at = now - DAY_S + DAY_S * i / n
        job, queue = JOBS[rng.randrange(len(JOBS))]
        failed = rng.random() < 0.05
        batch.append(Event(type="job.failed" if failed else "job.succeeded", stream_id=f"job-b{i}",
                           data={"job": job, "queue": queue, "attempt": 1, "at": at,
                                 "runtime_s": rng.lognormvariate(-3, 1)}))
        if len(batch) == 5000:
            fnd.events.append(batch)  # type: ignore[attr-defined]
            batch = []
    if batch:
        fnd.events.append(batch)  # type: ignore[attr-defined]
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE esf_events SET recorded_at = to_timestamp((data->>'at')::float8 + 1) "
                     "WHERE event_type IN ('job.succeeded', 'job.failed')")
        conn.execute("ANALYZE esf_events")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], full_n=300_000, quick_n=30_000, full_runs=5)
    report = Report("rollups", args)
    import esf
    from esf.telemetry import job_slos, job_summaries
    from esf.telemetry._rollup import roll_up, rollup_backend
    from esf.telemetry._slo import iter_job_events

    name = f"esf_bench_rollups_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fnd = esf.Foundation(esf.Settings(data_dir=tmp, database_url=url))
            try:
                now = time.time()
                t = time.perf_counter()
                load(fnd, url, args.n, now)
                report.log(f"loaded {args.n:,} events in {time.perf_counter() - t:.1f} s")
                backend = rollup_backend(fnd.events)
                t = time.perf_counter()
                rolled = roll_up(fnd.events, backend, now=now, settle_s=120, max_minutes=1440, first_s=DAY_S)
                report.add("rollup.catch_up_day_s", [time.perf_counter() - t], "s")
                report.log(f"rolled up {rolled['minutes']} minutes into {rolled['rows']:,} rows")

                def via_rollups() -> int:
                    out = job_summaries(fnd.events, backend, window_s=DAY_S, now=now)
                    return int(out["rollup_rows"]) + int(out["raw_events"])

                def via_raw() -> int:
                    return int(job_summaries(fnd.events, None, window_s=DAY_S, now=now)["raw_events"])

                def via_exact() -> int:
                    rows = list(iter_job_events(fnd.events, now - DAY_S))
                    job_slos(rows, timedelta(seconds=DAY_S), now=now)
                    return len(rows)

                contenders = {"rollups": via_rollups, "raw": via_raw, "exact": via_exact}
                a = job_summaries(fnd.events, backend, window_s=DAY_S, now=now)["jobs"]
                assert a == job_summaries(fnd.events, None, window_s=DAY_S, now=now)["jobs"]
                read = {k: fn() for k, fn in contenders.items()}  # also the warm-up
                samples: dict[str, list[float]] = {k: [] for k in contenders}
                for run in range(args.runs):
                    for k, fn in contenders.items():
                        t = time.perf_counter()
                        fn()
                        samples[k].append((time.perf_counter() - t) * 1000)
                    report.log(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.1f} ms"
                                                                         for k, v in samples.items()))
                for k, values in samples.items():
                    report.add(f"{k}.answer_ms", values, "ms")
                    report.add(f"{k}.rows_read", [float(read[k])])
                report.paired_ratio("rollups_vs_raw.time", samples["rollups"], samples["raw"])
                report.paired_ratio("rollups_vs_exact.time", samples["rollups"], samples["exact"])
                report.paired_ratio("exact_over_rollups.speedup", samples["exact"], samples["rollups"])
            finally:
                fnd.close()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    report.finish("exact_over_rollups_speedup", report.doc["ratios"]["exact_over_rollups.speedup"])


if __name__ == "__main__":
    main()
