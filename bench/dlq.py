"""Dead-letter queue benchmark: reading a DLQ's depth and a page, against browsing it, in one run.

    python bench/dlq.py [--quick] [--json] [-n ENTRIES] [--brokers redis,amqp]

With N entries on a DLQ:

1. ``depth()`` (what ``esf health`` and the ``esf.dlq.depth`` gauge read) against the baseline, a
   browse of every message (unacknowledged gets, then the channel closed): how depth was read
   before, and what any browsing health check costs.
2. One page of 100 entries (``list(limit=100)``).
3. ``purge`` of every entry, per entry by its content (entries/s).

Uses a Redis DB (1-15) leased like the test fixtures do, and a queue of its own on RabbitMQ.
The last line printed is the headline ratio: browse / depth on Redis.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import AMQP_URL, REDIS_HOST, REDIS_PORT, Report, lease_redis_db, parse_args

import esf
from esf.foundation import Foundation
from esf.jobs._deadletter import DeadLetter, dlq_name

PAGE = 100


def fill(fnd: Foundation, queue: str, n: int) -> None:
    now = time.time()
    conn = fnd.celery.connection_for_write()
    try:
        for i in range(n):
            fnd.jobs.dlq.publish(DeadLetter(id=str(uuid.uuid4()), job_id=str(uuid.uuid4()), job="bench.job",
                                            queue=queue, args=[i], reason="non_retryable", attempts=1,
                                            first_attempt_at=now, last_attempt_at=now, dead_lettered_at=now),
                                 connection=conn)
    finally:
        conn.release()


def browse(fnd: Foundation, queue: str) -> int:
    """The baseline: every message fetched unacknowledged, then given back by closing the channel."""
    from esf.jobs._celery import dead_letter_queue

    conn = fnd.celery.connection_for_write()
    try:
        channel = conn.channel()
        bound = dead_letter_queue(fnd.settings, dlq_name(queue))(channel)
        n = 0
        while bound.get(no_ack=False) is not None:
            n += 1
        channel.close()
        return n
    finally:
        conn.release()


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Milliseconds per call of ``fn``, ``runs`` times."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


#: browse / depth per broker kind, filled by ``run``.
ratios: dict[str, float] = {}


def run(report: Report, kind: str, env: dict[str, str], n: int, runs: int) -> None:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**env, "ESF_JOBS_QUEUES": queue, "ESF_JOBS_DEFAULT_QUEUE": queue,
           "ESF_JOBS_SERVICE_NAMESPACE": f"esf-{uuid.uuid4().hex[:8]}", "ESF_JOBS_REDIS_DURABILITY_CHECK": "off"}
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        report.log(f"{kind}: filling {queue}.dlq with {n} entries")
        fill(fnd, queue, n)
        assert fnd.jobs.dlq.depth(queue)[queue] == n
        browse_ms = report.add(f"{kind}.browse_all_ms", timed(lambda: browse(fnd, queue), runs), "ms")
        depth_ms = report.add(f"{kind}.depth_ms", timed(lambda: fnd.jobs.dlq.depth(queue), max(runs, 5)), "ms")
        report.add(f"{kind}.page_{PAGE}_ms", timed(lambda: fnd.jobs.dlq.list(queue, limit=PAGE), max(runs, 5)),
                   "ms")
        ratios[kind] = report.ratio(f"{kind}.browse_vs_depth", browse_ms, depth_ms)
        start = time.perf_counter()
        purged = fnd.jobs.dlq.purge(queue, batch_size=500)
        report.add(f"{kind}.purge_per_s", [purged / (time.perf_counter() - start)], "entries/s")
        assert purged == n, (purged, n)
    finally:
        if kind == "amqp":
            from kombu import Connection

            with Connection(AMQP_URL) as conn:
                for name in (queue, dlq_name(queue)):
                    conn.default_channel.queue_delete(name)
        fnd.close()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], full_n=20_000, quick_n=2_000,
                      extra=[(["--brokers"], {"default": "redis,amqp", "help": "comma-separated: redis, amqp"})])
    brokers = [b for b in args.brokers.split(",") if b]
    report = Report("dlq", args, entries=args.n, brokers=brokers)
    with lease_redis_db() as db:
        redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        for kind in brokers:
            broker = redis_url if kind == "redis" else AMQP_URL
            run(report, kind, {"ESF_BROKER_URL": broker, "ESF_REDIS_URL": redis_url}, args.n, args.runs)
    kind = "redis" if "redis" in brokers else brokers[0]
    report.finish(headline=f"browse_vs_depth_{kind}", value=ratios[kind])


if __name__ == "__main__":
    main()
