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
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, lease_redis_db, parse_args, stop_process

import esf
from esf import Event

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
ADMIN_URL = os.environ.get("ESF_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TRANSITIONS_PER_SAGA = 4


def create_db() -> tuple[str, str]:
    name = f"esf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_db(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "esf.cli", "--app", "bench._sagas_app:make", "worker",
                                 "--concurrency=2", "--loglevel=WARNING"], cwd=ROOT, env=full,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # ready when its dispatcher has created the saga's subscription
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        with psycopg.connect(env["ESF_DATABASE_URL"]) as conn:
            try:
                n = conn.execute("SELECT count(*) FROM esf_subscriptions").fetchone()[0]  # type: ignore[index]
            except psycopg.errors.UndefinedTable:
                n = 0
        if n >= 1:
            return proc
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")


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
    db_name, db_url = create_db()
    proc = None
    try:
        with lease_redis_db() as db, tempfile.TemporaryDirectory() as tmp:
            redis_url = f"redis://127.0.0.1:6379/{db}"
            env = {"ESF_BROKER_URL": redis_url, "ESF_DATABASE_URL": db_url, "ESF_DATA_DIR": tmp,
                   "ESF_JOBS_REDIS_DURABILITY_CHECK": "off", "ESF_TELEMETRY_ENABLED": "false",
                   "ESF_EVENTS_RECORD_JOB_EVENTS": "false", "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.2",
                   "BENCH_REDIS_URL": redis_url}
            os.environ["BENCH_REDIS_URL"] = redis_url
            from _sagas_app import make

            os.environ.update({k: v for k, v in env.items() if k.startswith("ESF_")})
            fnd = make()
            r = redis.Redis.from_url(redis_url)
            proc = start_worker(env, Path(tmp) / "worker.log")
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
        drop_db(db_name)
    report.finish(headline="sagas_vs_chained_jobs", value=headline)


if __name__ == "__main__":
    main()
