"""Saga transitions per second on PostgreSQL with a Redis broker and one worker of 2 pool processes.

N sagas (default 500; ``--quick`` 100) of three steps each are started by appending N
``bench.order`` events at once, each with its own correlation id (the saga correlates by it,
so the instances' events are handled in parallel); each saga makes 4 transitions (started, then one per
completed step, the last completing it). Every transition reads the instance's row, writes it
by compare-and-set, appends its event to ``saga-bench_order-<id>`` and puts the next step's job
in the outbox, in one transaction. Measured from the append to the moment the last instance is
``completed``.

Baseline in the same run, alternating: the same three steps as plain chained ESF jobs (each
job enqueues the next), N chains started at once, measured until the last chain's third job ran.

    python bench/sagas.py [--quick] [--json] [-n N] [--runs R]

The last line printed is the headline: sagas completed per second / plain chains completed
per second (what the durable state, the transition events and the outbox cost per step).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Report,
    esf_worker_env,
    lease_redis_db,
    parse_args,
    pg_database,
    start_esf_worker,
    stop_process,
)

import esf
from esf import Event

TRANSITIONS_PER_SAGA = 4


def completed(db_url: str, prefix: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM esf_sagas WHERE status = 'completed' AND saga_id LIKE %s",
                           (f"{prefix}%",)).fetchone()
    return int(row[0]) if row else 0


def saga_run(fnd: esf.Foundation, db_url: str, n: int, timeout_s: float) -> float:
    prefix = f"r{uuid.uuid4().hex[:6]}-"
    events = [Event("bench.order", {"order_id": f"{prefix}{i}"}, correlation_id=f"{prefix}{i}") for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 500):
        fnd.events.append(events[i:i + 500])
    while completed(db_url, prefix) < n:
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"sagas: {completed(db_url, prefix)} of {n} completed in {timeout_s} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def chain_run(fnd: esf.Foundation, r: redis.Redis[bytes], n: int, timeout_s: float) -> float:
    r.delete("bench:chains_done")
    job = fnd.jobs.get("bench.chain_one")
    started = time.perf_counter()
    job.enqueue_many([[i] for i in range(n)])
    while int(r.get("bench:chains_done") or 0) < n:
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"chains: {int(r.get('bench:chains_done') or 0)} of {n} done in {timeout_s} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__ or "", full_n=500, quick_n=100)
    report = Report("sagas", args, steps_per_saga=3, transitions_per_saga=TRANSITIONS_PER_SAGA, pool=2)
    with pg_database() as db_url:
        proc = None
        try:
            with lease_redis_db() as db, tempfile.TemporaryDirectory() as tmp:
                redis_url = f"redis://127.0.0.1:6379/{db}"
                env = {**esf_worker_env(db_url, redis_url, tmp), "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.2"}
                os.environ["BENCH_REDIS_URL"] = redis_url
                from _sagas_app import make

                os.environ.update({k: v for k, v in env.items() if k.startswith("ESF_")})
                fnd = make()
                r = redis.Redis.from_url(redis_url)
                # ready when its dispatcher has created the saga's subscription
                proc = start_esf_worker("bench._sagas_app:make", env, Path(tmp) / "worker.log", concurrency=2,
                                        subscriptions=1)
                timeout_s = 60 + args.n * 0.5
                saga_rates, chain_rates = [], []
                saga_run(fnd, db_url, 10, timeout_s)  # warm-up: pool processes, connections
                chain_run(fnd, r, 10, timeout_s)
                for run in range(args.runs):
                    chain_s = chain_run(fnd, r, args.n, timeout_s)
                    saga_s = saga_run(fnd, db_url, args.n, timeout_s)
                    chain_rates.append(args.n / chain_s)
                    saga_rates.append(args.n / saga_s)
                    report.log(f"run {run + 1}: sagas {saga_s:.2f} s, chains {chain_s:.2f} s for {args.n}")
                report.add("sagas_per_s", saga_rates, "/s")
                report.add("saga_transitions_per_s", [x * TRANSITIONS_PER_SAGA for x in saga_rates], "/s")
                report.add("chains_per_s", chain_rates, "/s")
                report.add("chain_jobs_per_s", [x * 3 for x in chain_rates], "/s")
                headline = report.paired_ratio("sagas_vs_chains", saga_rates, chain_rates)
                fnd.close()
        finally:
            if proc is not None:
                stop_process(proc)
    report.finish(headline="sagas_vs_chained_jobs", value=headline)


if __name__ == "__main__":
    main()
