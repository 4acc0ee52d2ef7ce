"""Event store append benchmark: ESF vs raw psycopg (executemany, COPY) vs the eventsourcing library.

All on the same PostgreSQL, in one run, each measured on a fresh database;
``es_strategy_same_table`` is the like-for-like comparison (eventsourcing's
write strategy, table lock + pipelined executemany per batch, on the
``esf_events`` shape); ``eventsourcing`` is the library on its own table;
``eventsourcing_mapped`` is the library end to end (its mapper's JSON
transcoding, then its recorder); median of ``--repeats`` runs (3 by default).
Also: single-event append latency (p50/p99), SQLite batched appends, and
``append_async`` end to end through a worker (Redis broker; ``--skip-async``).

    .venv/bin/python bench/events.py            # full: 100,000 events per method
    .venv/bin/python bench/events.py --quick    # under a minute: 20,000 events
    .venv/bin/python bench/events.py --json     # machine-readable results, then the headline

The last line printed is the headline: ESF batched append throughput divided
by raw ``executemany`` of the same rows in one transaction (target ≥ 0.5).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _common import pg_database
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esf.plugins.sqlalchemy_events import SqlEventStore

from esf.events import Event
from esf.events._validation import prepare_events

COLUMNS = (
    "position, event_id, stream_id, stream_version, event_type, recorded_at, monotonic_ns, node, pid, "
    "correlation_id, parent_id, data, metadata, content_hash"
)


def make_events(n: int, streams: int = 100) -> list[Event]:
    return [
        Event(
            "bench.order_placed",
            {"i": i, "user_id": i % 1000, "amount": round(i * 0.37, 2), "currency": "EUR", "tags": ["a", "b"]},
            correlation_id=f"c-{i % 500}",
            stream_id=f"order-{i % streams}",
            metadata={"source": "bench"},
        )
        for i in range(n)
    ]


def raw_rows(events: list[Event]) -> list[tuple[Any, ...]]:
    """The exact rows ESF stores, precomputed (the raw baselines pay no validation)."""
    prepared = prepare_events(events, max_event_bytes=10_000_000)
    versions: dict[str, int] = {}
    rows = []
    for pos, p in enumerate(prepared, start=1):
        versions[p.stream_id] = versions.get(p.stream_id, 0) + 1
        rows.append(
            (
                pos,
                p.event_id,
                p.stream_id,
                versions[p.stream_id],
                p.event_type,
                p.recorded_at,
                p.monotonic_ns,
                "bench",
                p.pid,
                p.correlation_id,
                p.parent_id,
                Jsonb(p.data),
                Jsonb(p.metadata),
                p.content_hash,
            )
        )
    return rows


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- the contenders (each returns seconds) ------------------------------------------


def run_esf_batched(url: str, events: list[Event], batch: int) -> float:
    store = SqlEventStore(url, node="bench")
    try:
        t0 = time.perf_counter()
        for chunk in chunks(events, batch):
            store.append(chunk)
        elapsed = time.perf_counter() - t0
        assert store.head() == len(events)
        return elapsed
    finally:
        store.close()


def _raw_table(url: str, table: str) -> None:
    SqlEventStore(url, node="bench").close()  # migrations create esf_events; copy its shape and indexes
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (LIKE esf_events INCLUDING ALL)")


def run_executemany(url: str, rows: list[tuple[Any, ...]]) -> float:
    _raw_table(url, "bench_raw")
    placeholders = ", ".join(["%s"] * 14)
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO bench_raw ({COLUMNS}) VALUES ({placeholders})", rows)
        conn.commit()
        return time.perf_counter() - t0


def run_copy(url: str, rows: list[tuple[Any, ...]]) -> float:
    _raw_table(url, "bench_copy")
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY bench_copy ({COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - t0


def run_es_strategy_same_table(url: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Like-for-like: the eventsourcing recorder's write strategy on ESF's table shape.

    ``PostgresApplicationRecorder.insert_events`` does, per call: a pipeline, a
    transaction, ``LOCK TABLE … IN EXCLUSIVE MODE`` and one ``executemany`` of
    the rows. Here the same, batch by batch, into a copy of ``esf_events`` (same
    columns and indexes) with ESF's precomputed rows: no validation, no hashing,
    no idempotency or version checks.
    """
    _raw_table(url, "bench_es")
    placeholders = ", ".join(["%s"] * 14)
    insert = f"INSERT INTO bench_es ({COLUMNS}) VALUES ({placeholders})"
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        for chunk in chunks(rows, batch):
            with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                cur.execute("LOCK TABLE bench_es IN EXCLUSIVE MODE")
                cur.executemany(insert, chunk)
        return time.perf_counter() - t0


def _es_recorder(url: str) -> tuple[Any, Any]:
    """The eventsourcing library's datastore and application recorder on ``url`` (its table created)."""
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    info = psycopg.conninfo.conninfo_to_dict(url)
    datastore = PostgresDatastore(
        dbname=str(info["dbname"]),
        host=str(info.get("host", "127.0.0.1")),
        port=str(info.get("port", 5432)),
        user=str(info.get("user", "postgres")),
        password=str(info.get("password", "")),
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name="es_events")
    recorder.create_table()
    return datastore, recorder


def _compact_json(data: Any) -> bytes:
    return json.dumps(dict(data), separators=(",", ":")).encode()


def _es_numbered(events: list[Event]) -> Iterator[tuple[uuid.UUID, int, Event]]:
    """Each event with its eventsourcing originator (one UUID per stream) and version."""
    originators: dict[str, uuid.UUID] = {}
    versions: dict[str, int] = {}
    for e in events:
        sid = e.stream_id or "$global"
        versions[sid] = versions.get(sid, 0) + 1
        yield originators.setdefault(sid, uuid.uuid4()), versions[sid], e


def run_eventsourcing(url: str, events: list[Event], batch: int) -> float:
    from eventsourcing.persistence import StoredEvent as EsStoredEvent

    datastore, recorder = _es_recorder(url)
    stored = [
        EsStoredEvent(originator, version, "bench:OrderPlaced", _compact_json(e.data))
        for originator, version, e in _es_numbered(events)
    ]
    try:
        t0 = time.perf_counter()
        for chunk in chunks(stored, batch):
            recorder.insert_events(chunk)
        return time.perf_counter() - t0
    finally:
        datastore.close()


@functools.cache
def _es_domain_event() -> Any:
    """The eventsourcing domain event of the bench (one class: the library registers its topic)."""
    from eventsourcing.domain import DomainEvent

    @dataclass(frozen=True)
    class OrderPlaced(DomainEvent):
        data: dict[str, Any]
        correlation_id: str | None

    return OrderPlaced


def run_eventsourcing_mapped(url: str, events: list[Event], batch: int) -> float:
    """The library end to end: its domain events through its ``Mapper`` (JSON transcoder) and recorder.

    What ``Application.save()`` does with the pending events of aggregates: the
    domain events are built before the clock starts (as ESF's events are),
    their serialization and the insert are timed, as ESF's validation,
    encoding and insert are.
    """
    from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex

    OrderPlaced = _es_domain_event()
    datastore, recorder = _es_recorder(url)
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    mapper: Mapper[uuid.UUID] = Mapper(transcoder=transcoder)
    domain_events = [
        OrderPlaced(
            originator_id=originator,
            originator_version=version,
            timestamp=OrderPlaced.create_timestamp(),
            data=dict(e.data),
            correlation_id=e.correlation_id,
        )
        for originator, version, e in _es_numbered(events)
    ]
    try:
        t0 = time.perf_counter()
        for chunk in chunks(domain_events, batch):
            recorder.insert_events([mapper.to_stored_event(d) for d in chunk])
        return time.perf_counter() - t0
    finally:
        datastore.close()


def run_async_appends(pg_url: str, redis_url: str, events: list[Event]) -> dict[str, float]:
    """``fnd.append_async`` of every event, one call each, written by one worker (2 processes).

    The events travel as coalesced ``esf.events.append`` jobs over Redis; the clock
    runs from the first call until the store holds every event. Returns the end-to-end
    events/s and the rate of the calls themselves.
    """
    import subprocess

    import esf
    from esf.foundation import Foundation

    bench_dir = Path(__file__).resolve().parent
    data_dir = tempfile.mkdtemp(prefix="esf-bench-async-")
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    env = {
        "ESF_BROKER_URL": redis_url,
        "ESF_REDIS_URL": redis_url,
        "ESF_DATABASE_URL": pg_url,
        "ESF_DATA_DIR": data_dir,
        "ESF_JOBS_SERVICE_NAMESPACE": namespace,
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false",
    }
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    worker_env.update(env)
    worker_env["PYTHONPATH"] = os.pathsep.join([str(bench_dir), str(bench_dir.parent)])
    worker_env["BENCH_REDIS_URL"] = redis_url
    log = Path(data_dir) / "worker.log"
    argv = [sys.executable, "-m", "esf.cli", "--app", "_jobs_apps:make_esf", "worker", "--concurrency=2",
            f"--queues={namespace}.events", "--loglevel=INFO"]
    with open(log, "ab") as fh:
        worker = subprocess.Popen(argv, cwd=bench_dir, env=worker_env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        store = fnd.events
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"async-append worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        t0 = time.perf_counter()
        for event in events:
            fnd.append_async(event)
        calls_s = time.perf_counter() - t0
        deadline = time.monotonic() + 300
        while store.head() < len(events):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"async appends: {store.head()} of {len(events)} stored")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        return {"events_per_s": len(events) / elapsed, "calls_per_s": len(events) / calls_s}
    finally:
        fnd.close()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}.*"):
            client.delete(key)
        client.close()


def single_append_latencies(url: str, n: int) -> list[float]:
    store = SqlEventStore(url, node="bench")
    try:
        store.append(Event("bench.warmup"))
        out = []
        for i in range(n):
            ev = Event("bench.single", {"i": i}, stream_id=f"single-{i % 10}")
            t0 = time.perf_counter()
            store.append(ev)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        store.close()


def run_sqlite(events: list[Event], batch: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = SqlEventStore(f"sqlite:///{d}/bench.sqlite", node="bench")
        try:
            t0 = time.perf_counter()
            for chunk in chunks(events, batch):
                store.append(chunk)
            return time.perf_counter() - t0
        finally:
            store.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events (under a minute)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--events", type=int, default=None, help="events per method (default 100000, quick 20000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per append call / transaction")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the median is reported")
    parser.add_argument(
        "--pg-url", default=os.environ.get("ESF_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ESF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
        help="broker of the append_async measurement",
    )
    parser.add_argument("--skip-async", action="store_true", help="skip the append_async measurement")
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 100_000)
    n_sqlite = 20_000 if args.quick else 100_000
    n_single = 300 if args.quick else 2000
    events = make_events(n)
    rows = raw_rows(events)

    contenders: dict[str, Callable[[str], float]] = {
        "esf_batched": lambda url: run_esf_batched(url, events, args.batch),
        "raw_executemany": lambda url: run_executemany(url, rows),
        "raw_copy": lambda url: run_copy(url, rows),
        "eventsourcing": lambda url: run_eventsourcing(url, events, args.batch),
        "eventsourcing_mapped": lambda url: run_eventsourcing_mapped(url, events, args.batch),
        "es_strategy_same_table": lambda url: run_es_strategy_same_table(url, rows, args.batch),
    }
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():  # interleaved, so drifts in machine load hit every contender
            with pg_database(args.pg_url) as url:
                seconds[name].append(fn(url))
    with pg_database(args.pg_url) as url:
        lat = single_append_latencies(url, n_single)
    async_runs = []
    if not args.skip_async:
        n_async = 5000 if args.quick else 20_000
        for _ in range(args.repeats):
            with pg_database(args.pg_url) as url:
                async_runs.append(run_async_appends(url, args.redis_url, make_events(n_async)))
    sqlite_s = statistics.median(run_sqlite(make_events(n_sqlite), args.batch) for _ in range(args.repeats))

    eps = {k: n / statistics.median(v) for k, v in seconds.items()}
    results: dict[str, Any] = {
        "events": n,
        "batch": args.batch,
        "repeats": args.repeats,
        "postgresql_events_per_s": {k: round(v) for k, v in eps.items()},
        "ratio_esf_vs_executemany": round(eps["esf_batched"] / eps["raw_executemany"], 3),
        "ratio_esf_vs_copy": round(eps["esf_batched"] / eps["raw_copy"], 3),
        "ratio_esf_vs_eventsourcing": round(eps["esf_batched"] / eps["eventsourcing"], 3),
        "ratio_esf_vs_eventsourcing_mapped": round(eps["esf_batched"] / eps["eventsourcing_mapped"], 3),
        "ratio_esf_vs_es_strategy_same_table": round(eps["esf_batched"] / eps["es_strategy_same_table"], 3),
        "single_append_ms": {
            "n": n_single,
            "p50": round(percentile(lat, 0.50) * 1000, 3),
            "p99": round(percentile(lat, 0.99) * 1000, 3),
        },
        "sqlite": {"events": n_sqlite, "events_per_s": round(n_sqlite / sqlite_s)},
    }
    if async_runs:
        results["async_append"] = {
            "events": n_async,
            "events_per_s": round(statistics.median(r["events_per_s"] for r in async_runs)),
            "calls_per_s": round(statistics.median(r["calls_per_s"] for r in async_runs)),
        }
    ratio = results["ratio_esf_vs_executemany"]
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(f"PostgreSQL, {n} events, batches of {args.batch}, median of {args.repeats} (events/s):")
        for k, v in eps.items():
            print(f"  {k:<24} {v:>12,.0f}")
        print(
            f"  ESF / executemany  {ratio:.2f}   ESF / COPY  {results['ratio_esf_vs_copy']:.2f}   "
            f"ESF / eventsourcing  {results['ratio_esf_vs_eventsourcing']:.2f}"
        )
        print(
            "  eventsourcing end to end (its Mapper and JSON transcoder, then its recorder): "
            f"ESF / it  {results['ratio_esf_vs_eventsourcing_mapped']:.2f}"
        )
        print(
            "  like-for-like (eventsourcing's write strategy on the esf_events shape): "
            f"ESF / it  {results['ratio_esf_vs_es_strategy_same_table']:.2f}"
        )
        sa = results["single_append_ms"]
        print(f"Single-event append ({sa['n']} calls): p50 {sa['p50']} ms, p99 {sa['p99']} ms")
        print(f"SQLite: {n_sqlite} events in batches of {args.batch}: {results['sqlite']['events_per_s']:,} events/s")
        if async_runs:
            aa = results["async_append"]
            print(
                f"append_async, one call per event, one worker (2 processes), Redis broker: {aa['events']} events, "
                f"{aa['events_per_s']:,} events/s stored end to end ({aa['calls_per_s']:,} calls/s)"
            )
    print(f"headline: ESF batched append / raw executemany = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
