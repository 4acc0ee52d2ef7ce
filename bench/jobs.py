"""Jobs throughput: ESF's default profile against bare Celery and Dramatiq, on Redis and RabbitMQ.

    .venv/bin/python bench/jobs.py            # 20,000 jobs, median of 3 runs (~30 min on 2 CPUs)
    .venv/bin/python bench/jobs.py --quick    # 2,000 jobs, one run
    .venv/bin/python bench/jobs.py --json

For each contender and run: enqueue N no-op jobs from this process with no worker
running (enqueue throughput), then start one worker (2 processes) and let it drain
the queue. Every job body increments one Redis counter and stamps the first and the
N-th completion (bench/_jobs_apps.py); drain throughput is (N-1) / (last - first).
Contenders, in the same run, interleaved:

  esf           ESF's default profile (`esf worker`: prefork 2, prefetch 1, late ack,
                requeue on worker loss, results, telemetry and job history)
  esf-batched   the same ESF enqueueing with `job.enqueue_many` (batches of 500: one Redis
                pipeline or one round of RabbitMQ publisher confirms per batch); enqueue only,
                its queue is purged instead of drained
  bare-same     a bare Celery task with the same reliability settings (late ack,
                reject on worker lost, prefetch 1, prefork 2, JSON, results in Redis;
                quorum queue + publisher confirms on RabbitMQ, like ESF)
  bare-fast-*   bare Celery's fast settings: ack on receipt, prefetch multiplier 64,
                prefork 2 or threads 2 (the best of the two counts)
  dramatiq      Dramatiq on the same Redis: 2 processes x 2 threads, its default
                ack after processing (Redis only; it stores no results)
  --variants    esf-plain (telemetry and job history off), esf-notel (telemetry off),
                esf-pg (job history in PostgreSQL instead of the embedded SQLite file)

Then the round trip of ``enqueue(...).wait()`` (p50/p99) against a running worker.
Ratios are medians of per-run ratios (contenders of one run share the machine's load).
The last line printed is ESF / bare-same drain throughput on Redis.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    AMQP_URL,
    BENCH_DIR,
    REDIS_HOST,
    REDIS_PORT,
    ROOT,
    Report,
    lease_redis_db,
    parse_args,
    percentile,
    stop_process,
)
from _jobs_apps import (
    BARE_TASK,
    COUNTER_KEY,
    ESF_JOB,
    FIRST_KEY,
    LAST_KEY,
    make_bare,
    make_dramatiq,
    make_esf,
)

WORKER_READY_TIMEOUT_S = 120



@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # esf | bare | dramatiq
    mode: str = ""  # bare: same | fast; esf: "" (defaults) | batched | plain (no telemetry, no job history)
    #                  | notel (no telemetry) | nohist (no job history) | pg
    pool: str = "prefork"


BATCHED = Contender("esf-batched", "esf", "batched")
REDIS_CONTENDERS = (
    Contender("esf", "esf"),
    Contender("bare-same", "bare", "same"),
    Contender("bare-fast-prefork", "bare", "fast", "prefork"),
    Contender("bare-fast-threads", "bare", "fast", "threads"),
    Contender("dramatiq", "dramatiq"),
    BATCHED,
)
AMQP_CONTENDERS = (*REDIS_CONTENDERS[:4], BATCHED)
#: --variants: ESF with telemetry and job history off (what instrumentation costs), ESF with
#: telemetry off (what telemetry costs), and ESF with its job history in PostgreSQL instead of
#: the embedded SQLite file.
VARIANTS = (Contender("esf-plain", "esf", "plain"), Contender("esf-notel", "esf", "notel"),
            Contender("esf-pg", "esf", "pg"))
#: PostgreSQL database of the esf-pg variant (created when missing).
PG_URL = os.environ.get("ESF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0] \
    + "/esf_bench_jobs"
#: --diagnose: bare Celery with ESF's reliability settings and ESF's monitoring settings.
OBSERVED = Contender("bare-observed", "bare", "observed")


class Bench:
    def __init__(self, report: Report, redis_url: str, n: int) -> None:
        import redis

        self.report = report
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.n = n
        self.tag = uuid.uuid4().hex[:6]
        self.logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"esf-bench-jobs-{self.tag}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.amqp_queues: list[str] = []

    # -- environment ---------------------------------------------------------------

    def broker_url(self, broker: str) -> str:
        return self.redis_url if broker == "redis" else AMQP_URL

    def queue_name(self, broker: str, c: Contender, run: int) -> str:
        name = f"bench-{self.tag}-{c.name}-{run}"
        if broker == "amqp":
            self.amqp_queues.extend([name, warm_queue(name)])
        return name

    def esf_env(self, broker: str, queue: str, mode: str = "") -> dict[str, str]:
        env = {
            "ESF_BROKER_URL": self.broker_url(broker),
            "ESF_REDIS_URL": self.redis_url,
            "ESF_JOBS_QUEUES": f"{queue},{warm_queue(queue)}",
            "ESF_JOBS_DEFAULT_QUEUE": queue,
            "ESF_DATA_DIR": str(self.logs / f"esf-data{'-' + mode if mode else ''}"),
        }
        if mode == "plain":
            env.update({"ESF_TELEMETRY_ENABLED": "false", "ESF_EVENTS_RECORD_JOB_EVENTS": "false"})
        elif mode == "notel":
            env["ESF_TELEMETRY_ENABLED"] = "false"
        elif mode == "nohist":
            env["ESF_EVENTS_RECORD_JOB_EVENTS"] = "false"
        elif mode == "pg":
            env["ESF_DATABASE_URL"] = PG_URL
        return env

    def worker_env(self, broker: str, queue: str, c: Contender, n: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ESF_", "BENCH_"))}
        env.update({
            "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(ROOT)]),
            "BENCH_BROKER_URL": self.broker_url(broker),
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_QUEUE": queue,
            "BENCH_N": str(n),
            "BENCH_MODE": c.mode,
        })
        if c.kind == "esf":
            env.update(self.esf_env(broker, queue, c.mode))
        return env

    # -- producers -------------------------------------------------------------------

    def producer(self, broker: str, queue: str, c: Contender) -> tuple[Any, Any, Any, Any]:
        """``(send, close, wait_one, warm)`` for a contender: send(i) enqueues one job.

        ``warm()`` sends :data:`WARM_UP` jobs to the contender's warm-up queue (emptied before a
        worker starts), so that connections and first-use set-up are not timed: ESF's job
        history writer, for one, opens its database on its first batch.
        """
        spare = warm_queue(queue)
        if c.kind == "esf":
            import esf

            fnd = make_esf(esf.Settings.from_env(self.esf_env(broker, queue, c.mode)))
            declare(fnd.celery)
            job = fnd.jobs.get(ESF_JOB)

            def warm_esf() -> None:
                for i in range(WARM_UP):
                    job.enqueue_with([i], queue=spare)
                if c is BATCHED:
                    job.enqueue_many([[i] for i in range(WARM_UP)], queue=spare)
                fnd.flush()

            if c is BATCHED:
                return (lambda items: job.enqueue_many([[i] for i in items], batch_size=500), fnd.close, None,
                        warm_esf)
            return job.enqueue, fnd.close, lambda i: job.enqueue(i).wait(timeout=30), warm_esf
        if c.kind == "bare":
            app = make_bare(self.broker_url(broker), self.redis_url, queue, c.mode)
            declare(app)
            task = app.tasks[BARE_TASK]

            def warm_bare() -> None:
                for i in range(WARM_UP):
                    task.apply_async((i,), queue=spare)

            return task.delay, app.close, lambda i: task.delay(i).get(timeout=30), warm_bare
        rbroker, actor = make_dramatiq(self.redis_url, queue)
        rbroker.declare_queue(spare)

        def warm_dramatiq() -> None:
            for i in range(WARM_UP):
                rbroker.enqueue(actor.message(i).copy(queue_name=spare))

        return actor.send, rbroker.close, None, warm_dramatiq

    def purge(self, broker: str, queue: str) -> None:
        """Drop what waits in ``queue`` (the warm-up jobs, so that the worker drains exactly N)."""
        if broker == "amqp":
            from kombu import Connection

            with Connection(AMQP_URL) as conn:
                try:
                    conn.channel().queue_purge(queue)
                except Exception:
                    pass  # never declared: nothing to drop
            return
        self.redis.delete(queue, f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")

    # -- workers -------------------------------------------------------------------

    def start_worker(self, broker: str, queue: str, c: Contender, n: int, log: Path) -> subprocess.Popen[bytes]:
        py = sys.executable
        if c.kind == "esf":
            argv = [py, "-m", "esf.cli", "--app", "_jobs_apps:make_esf", "worker", "--loglevel=INFO"]
        elif c.kind == "bare":
            prefetch = "64" if c.mode == "fast" else "1"
            argv = [py, "-m", "celery", "-A", "_jobs_apps:bare", "worker", f"--pool={c.pool}", "--concurrency=2",
                    f"--prefetch-multiplier={prefetch}", f"--queues={queue}", "--loglevel=INFO",
                    "--without-mingle", "--without-gossip", f"--hostname=bench-{c.name}-{uuid.uuid4().hex[:4]}@%h"]
            if c.mode == "observed":
                argv.append("--events")
        else:
            argv = [py, "-m", "dramatiq", "_jobs_apps:dramatiq_broker", "--processes=2", "--threads=2",
                    f"--queues={queue}"]
        with open(log, "ab") as fh:
            return subprocess.Popen(argv, cwd=BENCH_DIR, env=self.worker_env(broker, queue, c, n), stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, proc: subprocess.Popen[bytes], log: Path, c: Contender) -> None:
        marker = b"ready for action" if c.kind == "dramatiq" else b" ready."
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while marker not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{c.name} worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    # -- one measurement ---------------------------------------------------------------

    def fill(self, broker: str, c: Contender, run: int) -> tuple[str, float]:
        """Enqueue N jobs for ``c`` with no worker running; returns (its queue, seconds the enqueue took)."""
        queue = self.queue_name(broker, c, run)
        self.redis.delete(COUNTER_KEY, FIRST_KEY, LAST_KEY)
        send, close, _, warm = self.producer(broker, queue, c)
        try:
            warm()
            started = time.perf_counter()
            if c is BATCHED:
                send(range(self.n))
            else:
                for i in range(self.n):
                    send(i)
            enqueue_s = time.perf_counter() - started
        finally:
            close()
        self.purge(broker, warm_queue(queue))
        return queue, enqueue_s

    def throughput(self, broker: str, c: Contender, run: int) -> tuple[float, float | None]:
        """Enqueue N jobs, then drain them with one worker; returns (enqueue/s, drain/s or None)."""
        queue, enqueue_s = self.fill(broker, c, run)
        if c is BATCHED:  # enqueue only: the drain is the esf contender's
            self.purge(broker, queue)
            enqueue = self.n / enqueue_s
            self.report.log(f"{broker:5} run {run} {c.name:<18} enqueue {enqueue:8.1f}/s")
            return enqueue, None
        log = self.logs / f"{broker}-{c.name}-{run}.log"
        proc = self.start_worker(broker, queue, c, self.n, log)
        try:
            deadline = time.monotonic() + WORKER_READY_TIMEOUT_S + self.n / 20
            while self.redis.get(LAST_KEY) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    done = int(self.redis.get(COUNTER_KEY) or 0)
                    raise RuntimeError(f"{c.name} on {broker}: {done} of {self.n} jobs done; worker log:\n"
                                       f"{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.2)
            first = float(self.redis.get(FIRST_KEY) or 0)
            last = float(self.redis.get(LAST_KEY) or 0)
        finally:
            stop_process(proc)
        drain = (self.n - 1) / (last - first) if last > first else math.nan
        enqueue = self.n / enqueue_s
        self.report.log(f"{broker:5} run {run} {c.name:<18} enqueue {enqueue:8.1f}/s  drain {drain:8.1f}/s")
        return enqueue, drain

    def round_trips(self, broker: str, c: Contender, count: int) -> list[float]:
        """``count`` sequential enqueue-and-wait round trips, in milliseconds."""
        queue = self.queue_name(broker, c, 99)
        log = self.logs / f"{broker}-{c.name}-rtt.log"
        _send, close, wait_one, _warm = self.producer(broker, queue, c)
        proc = self.start_worker(broker, queue, c, 0, log)
        try:
            self.wait_ready(proc, log, c)
            wait_one(-1)  # connections and result subscription warm
            times = []
            for i in range(count):
                started = time.perf_counter()
                wait_one(i)
                times.append((time.perf_counter() - started) * 1000)
        finally:
            close()
            stop_process(proc)
        self.report.log(f"{broker:5} {c.name:<18} round trip p50 {percentile(times, 50):6.1f} ms  "
                        f"p99 {percentile(times, 99):6.1f} ms")
        return times

    def cleanup(self) -> None:
        if not self.amqp_queues:
            return
        from kombu import Connection

        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for name in self.amqp_queues:
                for kind, target in (("queue", name), ("queue", f"{name}.dlq"), ("exchange", name)):
                    try:
                        if kind == "queue":
                            channel.queue_delete(target)
                        else:
                            channel.exchange_delete(target)
                    except Exception:
                        channel = conn.channel()


def ensure_pg_database() -> None:
    """Create the esf-pg variant's database when it is missing."""
    import psycopg

    admin, name = PG_URL.rsplit("/", 1)
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


#: Jobs each producer sends to its warm-up queue before it is timed.
WARM_UP = 20


def warm_queue(queue: str) -> str:
    """The queue a contender's warm-up jobs go to (emptied before its worker starts)."""
    return f"{queue}-warm"


def declare(app: Any) -> None:
    """Declare the app's queues before enqueueing with no worker running (else RabbitMQ drops the messages)."""
    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn).declare()


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], full_n=20_000, quick_n=2_000,
                      extra=[(["--round-trips"], {"type": int, "default": None,
                                                   "help": "enqueue-and-wait round trips (default 200, quick 50)"}),
                             (["--brokers"], {"default": "redis,amqp", "help": "redis, amqp or both"}),
                             (["--variants"], {"action": "store_true",
                                               "help": "also run ESF without instrumentation and with "
                                                       "job history in PostgreSQL"}),
                             (["--diagnose"], {"action": "store_true",
                                               "help": "also run bare Celery with ESF's monitoring settings"})])
    round_trips = args.round_trips or (50 if args.quick else 200)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    report = Report("jobs", args, round_trips=round_trips, brokers=brokers, worker="1 worker, 2 processes")
    with lease_redis_db() as db:
        bench = Bench(report, f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", args.n)
        report.log(f"Redis DB {db}; worker logs in {bench.logs}")
        try:
            for broker in brokers:
                contenders = REDIS_CONTENDERS if broker == "redis" else AMQP_CONTENDERS
                if args.variants:
                    ensure_pg_database()
                    contenders = (*contenders, *VARIANTS)
                if args.diagnose:
                    contenders = (*contenders, OBSERVED)
                samples: dict[str, tuple[list[float], list[float]]] = {c.name: ([], []) for c in contenders}
                for run in range(1, args.runs + 1):
                    # Rotate the order so that no contender always runs first (or last) on a busy machine.
                    k = (run - 1) % len(contenders)
                    for c in contenders[k:] + contenders[:k]:
                        enqueue, drain = bench.throughput(broker, c, run)
                        samples[c.name][0].append(enqueue)
                        if drain is not None:
                            samples[c.name][1].append(drain)
                    bench.redis.flushdb()
                for c in contenders:
                    report.add(f"{broker}.{c.name}.enqueue", samples[c.name][0], "jobs/s")
                    if samples[c.name][1]:
                        report.add(f"{broker}.{c.name}.drain", samples[c.name][1], "jobs/s")
                summarise(report, broker, contenders)
                for c in (contenders[0], contenders[1]):
                    times = bench.round_trips(broker, c, round_trips)
                    report.add(f"{broker}.{c.name}.round_trip_p50", [percentile(times, 50)], "ms")
                    report.add(f"{broker}.{c.name}.round_trip_p99", [percentile(times, 99)], "ms")
                bench.redis.flushdb()
        finally:
            bench.cleanup()
    broker = "redis" if "redis.esf_vs_bare_same.drain" in report.doc["ratios"] else "amqp"
    headline = report.doc["ratios"].get(f"{broker}.esf_vs_bare_same.drain", math.nan)
    report.finish(f"esf/bare-same drain on {'Redis' if broker == 'redis' else 'RabbitMQ'}", headline)
    return 0


def summarise(report: Report, broker: str, contenders: tuple[Contender, ...]) -> None:
    """Ratios of ESF to each baseline: the median of the per-run ratios (see Report.paired_ratio)."""
    s = report.samples
    for what in ("enqueue", "drain"):
        esf_runs = s(f"{broker}.esf.{what}")
        report.paired_ratio(f"{broker}.esf_vs_bare_same.{what}", esf_runs, s(f"{broker}.bare-same.{what}"))
        fast = [s(f"{broker}.{c.name}.{what}") for c in contenders if c.name.startswith("bare-fast")]
        fastest_runs = [max(values) for values in zip(*fast, strict=True)]
        report.paired_ratio(f"{broker}.esf_vs_bare_fastest.{what}", esf_runs, fastest_runs)
        if what == "enqueue" and BATCHED in contenders:
            batched = s(f"{broker}.esf-batched.enqueue")
            report.paired_ratio(f"{broker}.esf_batched_vs_bare_fastest.enqueue", batched, fastest_runs)
            report.paired_ratio(f"{broker}.esf_batched_vs_bare_same.enqueue", batched,
                                s(f"{broker}.bare-same.enqueue"))
        if any(c.kind == "dramatiq" for c in contenders):
            report.paired_ratio(f"{broker}.esf_vs_dramatiq.{what}", esf_runs, s(f"{broker}.dramatiq.{what}"))
        if VARIANTS[0] in contenders:
            report.paired_ratio(f"{broker}.esf_vs_esf_plain.{what}", esf_runs, s(f"{broker}.esf-plain.{what}"))
            report.paired_ratio(f"{broker}.esf_vs_esf_notel.{what}", esf_runs, s(f"{broker}.esf-notel.{what}"))
            report.paired_ratio(f"{broker}.esf_pg_vs_bare_same.{what}", s(f"{broker}.esf-pg.{what}"),
                                s(f"{broker}.bare-same.{what}"))
        if OBSERVED in contenders:
            report.paired_ratio(f"{broker}.esf_vs_bare_observed.{what}", esf_runs,
                                s(f"{broker}.bare-observed.{what}"))

if __name__ == "__main__":
    sys.exit(main())
