"""Event queries on PostgreSQL: ESF's compiled DSL versus hand-written SQL, on the same database.

Loads N events (default 1,000,000; ``--quick``: 100,000) with ``COPY`` into a
fresh database, creates the schema's indexes (GIN ``jsonb_path_ops`` on
``data``), runs ``ANALYZE``, then times each query through ESF
(``esf.plugins.sqlalchemy_events._query`` on a SQLAlchemy connection,
returning StoredEvent values) and as plain SQL text through psycopg
(returning tuples of the same columns): the median of 5 samples after
warm-up, where a sample repeats a query to last >= 150 ms, and the side that goes first alternates.

    python bench/events_query.py [--quick] [--json] [--events N] [--keep] [--explain]

The last line printed is the headline: the worst ESF/SQL ratio (target <= 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from esf.plugins.sqlalchemy_events._query import count, fetch, followed_by
from esf.plugins.sqlalchemy_events._schema import events, metadata
from sqlalchemy import create_engine, text

from esf.events._query import Q

ADMIN_URL = os.environ.get("ESF_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = (
    "position, event_id, stream_id, stream_version, event_type, recorded_at, monotonic_ns, node, pid, "
    "correlation_id, parent_id, data, metadata"
)
#: Flows of event types sharing one correlation id (2-5 events each).
FLOWS = [
    ["order.created", "payment.received", "order.shipped", "order.delivered"],
    ["order.created", "payment.received", "order.shipped"],
    ["order.created", "payment.failed", "payment.received"],
    ["order.created", "order.cancelled"],
    ["order.created", "payment.received", "refund.requested", "refund.issued", "order.closed"],
    ["user.signup", "user.verified", "session.started"],
    ["session.started", "cart.updated", "cart.updated", "cart.abandoned"],
    ["invoice.created", "invoice.sent", "invoice.paid"],
    ["job.enqueued", "job.started", "job.succeeded"],
    ["job.enqueued", "job.started", "job.retried", "job.failed"],
    ["user.login", "profile.updated"],
    ["user.login", "password.changed"],
]
COUNTRIES = ["FR", "DE", "US", "GB", "ES", "IT", "NL", "BE", "CH", "JP", "BR", "IN"]


def generate(n: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """``n`` realistic rows ordered by time, positions 1..n."""
    rng = random.Random(seed)
    pending: list[tuple[datetime, str, str, dict[str, Any]]] = []
    clock = T0
    flow_no = 0
    while len(pending) < n:
        flow_no += 1
        clock += timedelta(microseconds=rng.randint(1_000, 400_000))
        corr = f"c-{flow_no}"
        user = rng.randint(1, 50_000)
        amount = round(rng.uniform(1, 500), 2)
        country = rng.choice(COUNTRIES)
        at = clock
        for step, etype in enumerate(rng.choice(FLOWS)):
            if step:
                # Mostly quick follow-ups, sometimes late ones (past a 10-minute window).
                at += timedelta(seconds=rng.choice([rng.uniform(1, 120), rng.uniform(60, 1800)]))
            data = {
                "user_id": user,
                "amount": amount,
                "country": country,
                "step": step,
                "sku": f"sku-{rng.randint(1, 999)}",
            }
            pending.append((at, etype, corr, data))
    pending = sorted(pending[:n], key=lambda r: r[0])
    rows = []
    for pos, (at, etype, corr, data) in enumerate(pending, start=1):
        rows.append(
            (
                pos,
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                f"order-{corr}",
                data["step"] + 1,
                etype,
                at,
                pos,
                "bench",
                1,
                corr,
                None,
                json.dumps(data),
                "{}",
                "0" * 64,
            )
        )
    return rows


def load(url: str, n: int) -> None:
    """Create the schema, COPY ``n`` rows, build the indexes, ANALYZE."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    metadata.create_all(engine)
    engine.dispose()
    t = time.perf_counter()
    rows = generate(n)
    print(f"generated {n:,} events in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    with psycopg.connect(url) as conn:
        for index in events.indexes:
            conn.execute(f'DROP INDEX "{index.name}"')
        t = time.perf_counter()
        names = [c.name for c in events.columns]
        with conn.cursor().copy(f"COPY esf_events ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        print(f"COPY {n:,} events in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.commit()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as sa_conn:
        sa_conn.execute(text("SET maintenance_work_mem = '256MB'"))
        for index in events.indexes:
            index.create(sa_conn)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE esf_events")
    print(f"indexes + ANALYZE in {time.perf_counter() - t:.1f} s", file=sys.stderr)


#: A timed sample lasts at least this long: sub-millisecond queries are repeated within a sample.
MIN_SAMPLE_MS = 150.0


def time_pair(esf: Callable[[int], int], sql: Callable[[int], int], runs: int = 5) -> tuple[float, float, int, int]:
    """Median over ``runs`` alternating samples of each side, in ms per query, after warm-up.

    Call ``i`` of both sides asks the same question with the same values, and the values change
    from call to call (a fresh filter each time, as in real use). A sample repeats the query
    ``k`` times (the same ``k`` for both sides, chosen so that a sample takes at least
    ``MIN_SAMPLE_MS``) and counts the mean: single sub-millisecond timings on a shared machine
    are mostly noise. The warm-up covers psycopg's automatic server-side prepare (after 5
    executions), so both sides are timed in their steady state.
    """
    esf_rows, sql_rows = esf(0), sql(0)
    if esf_rows != sql_rows:
        raise SystemExit(f"ESF returned {esf_rows} rows, SQL {sql_rows}")
    t = time.perf_counter()
    for i in range(1, 6):
        esf(i), sql(i)
    per_call_ms = (time.perf_counter() - t) * 1000 / 10
    k = max(1, min(200, int(MIN_SAMPLE_MS / max(per_call_ms, 1e-3)) + 1))
    esf_times, sql_times = [], []
    call = 6
    for _ in range(runs):
        # Touch this sample's rows first (untimed), so that neither side pays for reading pages
        # from the OS cache that the other side then finds in shared buffers.
        for j in range(k):
            sql(call + j)
        sides = ((esf, esf_times), (sql, sql_times))
        for side, times in sides if len(esf_times) % 2 == 0 else sides[::-1]:  # alternate who goes first
            t = time.perf_counter()
            for j in range(k):
                side(call + j)
            times.append((time.perf_counter() - t) * 1000 / k)
        call += k
    return statistics.median(esf_times), statistics.median(sql_times), esf_rows, sql_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 events instead of 1,000,000")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--explain", action="store_true", help="print the ESF plans (EXPLAIN ANALYZE)")
    ap.add_argument("--url", help="an already loaded database (from --keep): nothing is created or dropped")
    args = ap.parse_args()
    n = args.events or (100_000 if args.quick else 1_000_000)
    if args.url:
        results = run(args.url, explain=args.explain)
        with psycopg.connect(args.url) as conn:
            n = conn.execute("SELECT count(*) FROM esf_events").fetchone()[0]  # type: ignore[index]
        return report(results, n, args.json)
    name = f"esf_bench_query_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        load(url, n)
        results = run(url, explain=args.explain)
    finally:
        if args.keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return report(results, n, args.json)


def report(results: list[dict[str, Any]], n: int, as_json: bool) -> int:
    worst = max(results, key=lambda r: r["ratio"])
    if as_json:
        print(json.dumps({"events": n, "results": results, "worst_ratio": worst["ratio"]}, indent=2))
    else:
        print(f"{n:,} events on PostgreSQL; median of 5 samples, ms per query")
        print(f"{'query':<34}{'rows':>8}{'ESF':>10}{'SQL':>10}{'ratio':>8}")
        for r in results:
            print(f"{r['query']:<34}{r['rows']:>8}{r['esf_ms']:>10.2f}{r['sql_ms']:>10.2f}{r['ratio']:>7.2f}x")
    print(f"headline: worst ESF/SQL ratio {worst['ratio']:.2f}x ({worst['query']}; target <= 2x)")
    return 0


Case = tuple[str, Callable[[Any, int], int], Callable[[int], tuple[str, tuple[Any, ...]]]]


def cases() -> list[Case]:
    """(title, ESF run i, hand-written SQL and parameters for run i)."""
    within = timedelta(minutes=10)

    def window(i: int) -> tuple[datetime, datetime]:
        start = T0 + timedelta(minutes=5 * i)
        return start, start + timedelta(hours=1)

    return [
        (
            "data match: user_id == N",
            lambda c, i: len(fetch(c, Q.data("user_id") == 4242 + i)),
            lambda i: (
                f"SELECT {COLUMNS} FROM esf_events WHERE data @> %s::jsonb ORDER BY position",
                (json.dumps({"user_id": 4242 + i}),),
            ),
        ),
        (
            "data match + type",
            lambda c, i: len(fetch(c, Q.type("payment.received") & (Q.data("sku") == f"sku-{7 + i}"))),
            lambda i: (
                f"SELECT {COLUMNS} FROM esf_events WHERE event_type = %s AND data @> %s::jsonb ORDER BY position",
                ("payment.received", json.dumps({"sku": f"sku-{7 + i}"})),
            ),
        ),
        (
            "count(by=event_type)",
            lambda c, i: len(count(c, by="event_type")),
            lambda i: ("SELECT event_type, count(*) FROM esf_events GROUP BY event_type", ()),
        ),
        (
            "count(by=data.country)",
            lambda c, i: len(count(c, by="data.country")),
            lambda i: ("SELECT data->'country', count(*) FROM esf_events WHERE data ? 'country' GROUP BY 1", ()),
        ),
        (
            "followed_by 10m (1h of orders)",
            lambda c, i: len(
                followed_by(
                    c, Q.type("order.created") & Q.between(*window(i)), Q.type("payment.received"), within=within
                )
            ),
            lambda i: (
                f"SELECT DISTINCT ON (a.position) {_prefixed('a')}, {_prefixed('b')} "
                "FROM esf_events a JOIN esf_events b ON b.correlation_id = a.correlation_id "
                "AND b.position > a.position AND b.event_type = %s AND b.recorded_at <= a.recorded_at + %s "
                "WHERE a.event_type = %s AND a.recorded_at >= %s AND a.recorded_at < %s "
                "ORDER BY a.position, b.position",
                ("payment.received", within, "order.created", *window(i)),
            ),
        ),
    ]


def run(url: str, *, explain: bool = False) -> list[dict[str, Any]]:
    # Both sides plan every execution for its values (psycopg's automatic prepare off): a generic
    # plan for "data @> $1" assumes 1% selectivity and flips to a BitmapAnd with the type index
    # that is 5-10x slower for selective values, and when it flips depends on the values seen.
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), connect_args={"prepare_threshold": None}
    )
    raw = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    results = []
    with engine.connect() as conn:
        for title, esf_fn, sql_fn in cases():
            esf_ms, sql_ms, rows, _ = time_pair(
                lambda i, f=esf_fn: f(conn, i),  # type: ignore[misc]
                lambda i, f=sql_fn: len(raw.execute(*f(i)).fetchall()),  # type: ignore[misc]
            )
            results.append({"query": title, "rows": rows, "esf_ms": esf_ms, "sql_ms": sql_ms, "ratio": esf_ms / sql_ms})
            print(f"  {title}: ESF {esf_ms:.1f} ms, SQL {sql_ms:.1f} ms", file=sys.stderr)
        if explain:
            _explain(conn)
    raw.close()
    engine.dispose()
    return results


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in COLUMNS.split(","))


def _explain(conn: Any) -> None:
    """Print the plans of the compiled ESF statements (bound parameters rendered by the driver)."""
    from esf.plugins.sqlalchemy_events._query import select_events
    from psycopg.types.json import Jsonb

    from esf.events._query import as_query

    stmt, values = select_events(as_query(Q.data("user_id") == 4242), "postgresql")
    compiled = stmt.compile(conn)
    params = {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in compiled.construct_params(values).items()}
    plan = conn.exec_driver_sql("EXPLAIN ANALYZE " + str(compiled), params).fetchall()
    print("\n".join(r[0] for r in plan), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
