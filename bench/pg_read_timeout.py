"""What PostgreSQL's client-side read timeout costs: appends and round trips with it and without it.

    python bench/pg_read_timeout.py [--quick] [--json] [-n APPENDS] [--runs R] [--pg-url URL]

Two event stores on one fresh database, alike but for ``read_timeout_s`` (30 s, the default, against 0:
plain psycopg connections), interleaved round by round (the machine is shared; each round's contenders
share its load):

- ``append``: one single-event append per call (``fnd.events.append``: a transaction, a pipeline, a commit);
- ``select1``: ``SELECT 1`` on a connection held open (one wait per call: the smallest unit the timeout wraps).

A run is 10 rounds of ``n / 10`` calls per contender and keeps each contender's best round, in calls per
second (wall clock) and in microseconds of this process's CPU per call (what the wrapper costs, less
disturbed than the wall clock by other processes on a shared machine). Ratios are per run (median over
runs). The last line is the headline: an append's client CPU time with the read timeout over its time
without it (1.00: no cost).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import sqlalchemy as sa
from _common import Report, parse_args
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf import Event

ROUNDS = 10


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"esf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(calls per second, microseconds of this process's CPU per call)."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - started), (time.process_time() - cpu) / calls * 1e6


def main() -> None:
    args = parse_args(__doc__ or "", full_n=4_000, quick_n=1_000, extra=[
        (["--pg-url"], {"default": os.environ.get("ESF_BENCH_PG_URL",
                                                  "postgresql://postgres@127.0.0.1:5432/postgres")})])
    report = Report("pg_read_timeout", args, rounds=ROUNDS)
    per_round = max(1, args.n // ROUNDS)
    with fresh_database(args.pg_url) as url:
        stores = {"off": SqlEventStore(url, read_timeout_s=0), "on": SqlEventStore(url, read_timeout_s=30)}
        conns = {name: store.engine.connect() for name, store in stores.items()}
        try:
            assert type(conns["on"].connection.driver_connection).__name__ == "DeadlineConnection"
            assert type(conns["off"].connection.driver_connection) is psycopg.Connection
            contenders: dict[str, Callable[[], object]] = {}
            for name, store in stores.items():
                contenders[f"append.{name}"] = (lambda s=store: s.append(Event("bench.tick", {"n": 1})))
                contenders[f"select1.{name}"] = (lambda c=conns[name]: c.execute(sa.text("SELECT 1")).scalar())
            for fn in contenders.values():  # warm up: connections, statement caches
                measure(fn, 20)
            results: dict[str, list[float]] = {name: [] for name in contenders}
            cpu_us: dict[str, list[float]] = {name: [] for name in contenders}
            for run in range(args.runs):
                best = dict.fromkeys(contenders, 0.0)
                least = dict.fromkeys(contenders, float("inf"))
                for _ in range(ROUNDS):
                    for name, fn in contenders.items():
                        rate, cpu = measure(fn, per_round)
                        best[name], least[name] = max(best[name], rate), min(least[name], cpu)
                for name in contenders:
                    results[name].append(best[name])
                    cpu_us[name].append(least[name])
                report.log(f"run {run + 1}/{args.runs}: " + ", ".join(
                    f"{k} {v:,.0f}/s {least[k]:.1f} us CPU" for k, v in best.items()))
        finally:
            for conn in conns.values():
                conn.close()
            for store in stores.values():
                store.close()
    for name, values in results.items():
        report.add(f"{name}.calls_per_s", values, "/s")
    for name, values in cpu_us.items():
        report.add(f"{name}.cpu_us_per_call", values, "us")
    report.paired_ratio("select1_on_vs_off.time", results["select1.off"], results["select1.on"])
    report.paired_ratio("append_on_vs_off.time", results["append.off"], results["append.on"])
    report.paired_ratio("select1_on_vs_off.cpu", cpu_us["select1.on"], cpu_us["select1.off"])
    headline = report.paired_ratio("append_on_vs_off.cpu", cpu_us["append.on"], cpu_us["append.off"])
    report.finish(headline="append_cpu_with_read_timeout_vs_without", value=headline)


if __name__ == "__main__":
    main()
