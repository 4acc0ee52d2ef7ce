"""Subscriptions on PostgreSQL with a Redis broker: live latency, catch-up read rate, handler throughput.

1. **Live latency**: one event appended at a time (every 40 ms, each in a stream of its own) to a
   subscription on ``bench.ping`` partitioned by stream; the handler measures from just before
   the append to the moment it runs (append, commit, NOTIFY, dispatcher tick and publish,
   broker, worker). Side by side in the same run, alternating: a plain job enqueued to the
   same queue, measured from just before ``enqueue`` to its handler. Ratio: subscription p50 / job p50.
2. **Catch-up read rate**: N stored events (default 1,000,000; ``--quick`` 100,000), of which
   a filter (``event_type = 'order.paid' AND data.total > 100``) matches 10 %. The dispatcher's
   ticks (read, cut into batches, outbox rows, checkpoint), with every sent batch completed at
   once (instant handlers), against a hand-written ``SELECT position, stream_id … WHERE …
   ORDER BY position`` scan of the same rows through psycopg, and against the ``eventsourcing`` library's
   notification-log read of a copy of the rows in its own table (``select_notifications`` by topic in pages
   of 1,000, the data part of the filter in Python: its log filters by topic only).
   Every side reads the rows once untimed before the timed runs (cold pages, first compilations).
   Ratios: ESF / SQL and ESF / eventsourcing, events per second.
3. **Handler throughput**: 2,000 events (``--quick``: 600) over 64 streams, each handler spending
   2 ms of CPU, with a worker of 1, 2 and 4 pool processes; events per second from the first
   handler to the last. (On a 2-core machine, 4 processes cannot beat 2.)

    python bench/subscriptions.py [--quick] [--json] [-n N] [--runs R] [--phases latency,throughput,catchup]

The last line printed is the headline: the catch-up ratio ESF (partitioned by stream, the default) /
hand-written SQL (target >= 0.5); the strict-order subscription's ratio is printed too.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# This script's directory goes last on the path: its secrets.py must not shadow the standard library's
# secrets module (redis imports it); _common still comes from there.
sys.path.append(sys.path.pop(0))

import psycopg
import redis
from _common import (
    Report,
    esf_worker_env,
    lease_redis_db,
    parse_args,
    percentile,
    pg_database,
    start_esf_worker,
    stop_process,
)

import esf
from esf import Event, Q

FILTER = Q.type("order.paid") & (Q.data("total") > 100)
SQL_SCAN = ("SELECT position, stream_id FROM esf_events WHERE event_type = 'order.paid' "
            "AND jsonb_typeof(data -> 'total') = 'number' AND (data -> 'total')::numeric > 100 ORDER BY position")


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    """Workers of bench._subs_app, ready once the dispatcher has created both subscriptions' rows."""
    with esf.Foundation(esf.Settings.from_env(env)):
        return start_esf_worker("bench._subs_app:make", env, log, concurrency=concurrency, subscriptions=2)


def latency(report: Report, env: dict[str, str], r: redis.Redis[bytes], n: int, tmp: Path) -> float:
    fnd = esf.Foundation(esf.Settings.from_env(env))

    def ping_job(t: float) -> None:
        """Declared here to send it; the worker's own declaration runs it."""

    job = fnd.job(name="bench.ping_job", queue=fnd.settings.jobs.service_queue("events"), retries=0)(ping_job)
    proc = start_worker(env, 2, tmp / "lat.log")
    try:
        for i in range(10):  # warm-up: connections, first imports
            fnd.events.append(Event("bench.ping", {"t": time.time()}, stream_id=f"warm-{i}"))
            job.enqueue(time.time())
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while (r.llen("bench:lat") < 10 or r.llen("bench:job_lat") < 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        r.delete("bench:lat", "bench:job_lat")
        for i in range(n):
            if i % 2:
                fnd.events.append(Event("bench.ping", {"t": time.time()}, stream_id=f"ping-{i}"))
            else:
                job.enqueue(time.time())
            time.sleep(0.02)
        deadline = time.monotonic() + 60
        while (r.llen("bench:lat") + r.llen("bench:job_lat")) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        sub = [float(x) * 1000 for x in r.lrange("bench:lat", 0, -1)]
        plain = [float(x) * 1000 for x in r.lrange("bench:job_lat", 0, -1)]
    finally:
        stop_process(proc)
        fnd.close()
    report.add("live append->handler p50", [percentile(sub, 50)], "ms")
    report.add("live append->handler p99", [percentile(sub, 99)], "ms")
    report.add("plain enqueue->handler p50", [percentile(plain, 50)], "ms")
    report.add("plain enqueue->handler p99", [percentile(plain, 99)], "ms")
    return report.ratio("live p50 / plain job p50", percentile(sub, 50), percentile(plain, 50))


def load(fnd: esf.Foundation, n: int) -> int:
    rng = random.Random(1)
    types = ["order.paid", "order.created", "order.shipped", "cart.updated", "user.login"]
    matching = 0
    for start in range(0, n, 10_000):
        batch = []
        for i in range(start, min(n, start + 10_000)):
            kind = types[i % 5]
            total = rng.randint(1, 200)
            matching += kind == "order.paid" and total > 100
            batch.append(Event(kind, {"total": total, "user": rng.randint(1, 10_000)}, stream_id=f"s-{i % 997}"))
        fnd.events.append(batch)
    return matching


def es_app(db_url: str) -> Any:
    """An ``eventsourcing`` library application on PostgreSQL, on the bench database (its own table).

    Keep it referenced while its recorder is used: closing the application closes the recorder's pool.
    """
    from eventsourcing.application import Application

    info = psycopg.conninfo.conninfo_to_dict(db_url)
    app = Application(env={
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": str(info["dbname"]),
        "POSTGRES_HOST": str(info.get("host", "127.0.0.1")), "POSTGRES_PORT": str(info.get("port", 5432)),
        "POSTGRES_USER": str(info.get("user", "postgres")), "POSTGRES_PASSWORD": str(info.get("password", "")),
        "CREATE_TABLE": "y"})
    return app


def es_load(recorder: Any, db_url: str) -> None:
    """Copy the stored events into the library's table: same order, type as topic, same JSON data."""
    from eventsourcing.persistence import StoredEvent as EsStored

    with psycopg.connect(db_url) as conn, conn.cursor(name="copy") as cur:
        cur.itersize = 10_000
        cur.execute("SELECT stream_id, stream_version, event_type, data::text FROM esf_events ORDER BY position")
        while rows := cur.fetchmany(10_000):
            recorder.insert_events([EsStored(originator_id=uuid.uuid5(uuid.NAMESPACE_URL, stream),
                                             originator_version=int(version), topic=kind, state=data.encode())
                                    for stream, version, kind, data in rows])


def es_scan(recorder: Any) -> int:
    """The library's notification-log read of the same rows: ``order.paid`` by topic on the server, pages of
    1,000 in order, the ``total > 100`` part of the filter in Python (its log filters by topic only)."""
    import json

    got, start = 0, 1
    while True:
        page = recorder.select_notifications(start, 1000, topics=["order.paid"])
        for note in page:
            total = json.loads(note.state).get("total")
            got += isinstance(total, int | float) and total > 100
        if len(page) < 1000:
            return got
        start = page[-1].id + 1


def catch_up(report: Report, env: dict[str, str], n: int, runs: int) -> float:
    from esf.plugins.sqlalchemy_events import SqlSubscriptionBackend

    fnd = esf.Foundation(esf.Settings.from_env(env))
    report.log(f"loading {n:,} events")
    matching = load(fnd, n)
    with psycopg.connect(env["ESF_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE esf_events")
    backend = SqlSubscriptionBackend(fnd.events.engine)  # type: ignore[attr-defined]
    report.log("copying them into the eventsourcing library's table")
    app = es_app(env["ESF_DATABASE_URL"])
    recorder = app.recorder
    es_load(recorder, env["ESF_DATABASE_URL"])
    with psycopg.connect(env["ESF_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    rates: dict[str, list[float]] = {"esf": [], "esf-strict": [], "sql": [], "eventsourcing": []}
    sides = ["esf", "esf-strict", "sql", "eventsourcing"]

    def read(side: str, run: int | str) -> int:
        if side == "eventsourcing":
            return es_scan(recorder)
        if side == "sql":
            with psycopg.connect(env["ESF_DATABASE_URL"]) as conn, conn.cursor(name="scan") as cur:
                cur.itersize = 10_000
                return sum(1 for _ in cur.execute(SQL_SCAN))
        return drain(fnd, backend, f"catchup-{side}-{run}", None if side == "esf-strict" else "stream_id")

    # One untimed pass of every side first: none pays alone for the pages the loads and VACUUM left
    # cold or dirty, or for its first statements' compilation.
    for side in sides:
        read(side, "warm")
    for run in range(runs):
        for side in (sides if run % 2 == 0 else sides[::-1]):
            started = time.perf_counter()
            got = read(side, run)
            rates[side].append(got / (time.perf_counter() - started))
            if got != matching:
                raise RuntimeError(f"{side} read {got} events, {matching} match")
        with psycopg.connect(env["ESF_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("DELETE FROM esf_outbox")
    fnd.close()
    app.close()
    report.add("catch-up ESF dispatcher, by stream", rates["esf"], "ev/s")
    report.add("catch-up ESF dispatcher, strict order", rates["esf-strict"], "ev/s")
    report.add("catch-up hand-written SQL", rates["sql"], "ev/s")
    report.add("catch-up eventsourcing notification log", rates["eventsourcing"], "ev/s")
    report.paired_ratio("catch-up ESF by stream / eventsourcing", rates["esf"], rates["eventsourcing"])
    report.paired_ratio("catch-up ESF strict / SQL", rates["esf-strict"], rates["sql"])
    return report.paired_ratio("catch-up ESF by stream / SQL", rates["esf"], rates["sql"])


def drain(fnd: esf.Foundation, backend: Any, name: str, partition_by: str | None) -> int:
    """Catch a new subscription up through the dispatcher's ticks, completing every sent batch at once."""
    backend.ensure(name, start="beginning", spec={})
    got = 0
    while True:
        result = backend.tick(name, filter=FILTER, partition_by=partition_by, batch_size=1000, max_in_flight=16,
                              make_job=lambda b, p, c: {"job": "x", "job_id": uuid.uuid4().hex})
        got += result.read
        with fnd.events.engine.connect() as conn:  # type: ignore[attr-defined]
            sent = [row[0] for row in conn.exec_driver_sql(
                "SELECT id FROM esf_subscription_batches WHERE name = %(n)s AND state = 'sent'", {"n": name})]
        for batch_id in sent:
            backend.complete(name, batch_id)
        if result.read == 0 and result.sent == 0 and not sent:
            return got


def throughput(report: Report, env: dict[str, str], r: redis.Redis[bytes], n: int, tmp: Path) -> None:
    fnd = esf.Foundation(esf.Settings.from_env(env))
    for procs in (1, 2, 4):
        r.delete("bench:done", "bench:first", "bench:last")
        proc = start_worker(env, procs, tmp / f"thr-{procs}.log")
        try:
            fnd.events.append([Event("bench.work", {"work_ms": 2}, stream_id=f"w-{i % 64}") for i in range(n)])
            deadline = time.monotonic() + 600
            while int(r.get("bench:done") or 0) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            first, last = float(r.get("bench:first") or 0), float(r.get("bench:last") or 0)
            report.add(f"handlers, {procs} process(es)", [(n - 1) / (last - first) if last > first else 0], "ev/s")
        finally:
            stop_process(proc)
    fnd.close()


def main() -> None:
    args = parse_args(__doc__ or "", full_n=1_000_000, quick_n=100_000, full_runs=3, extra=[
        (["--phases"], {"default": "latency,throughput,catchup", "help": "comma-separated phases to run"})])
    phases = set(args.phases.split(","))
    report = Report("subscriptions", args, filter="order.paid & total > 100 (10 %)")
    tmp = Path(f"/tmp/esf-bench-subs-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    with pg_database() as db_url, lease_redis_db() as db:
        redis_url = f"redis://127.0.0.1:6379/{db}"
        env = esf_worker_env(db_url, redis_url, tmp / "data")
        r = redis.Redis.from_url(redis_url)
        if "latency" in phases:
            report.log("live latency")
            latency(report, env, r, 100 if args.quick else 400, tmp)
        if "throughput" in phases:
            report.log("handler throughput")
            throughput(report, env, r, 600 if args.quick else 2000, tmp)
        headline = catch_up(report, env, args.n, args.runs) if "catchup" in phases else float("nan")
    report.finish("catch-up ESF / hand-written SQL (target >= 0.5)", headline)


if __name__ == "__main__":
    main()
