"""Job metrics from real Celery workers add up exactly across workers and their pool processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import esf
from tests.conftest import REDIS_HOST, REDIS_PORT

from . import apps
from .harness import Worker, settings_env, wait_for


def _count(fnd, metric: str, job: str) -> float:  # type: ignore[no-untyped-def]
    snap = fnd.telemetry.snapshot(prefix=metric)
    series = snap["metrics"].get(metric, {}).get("series", [])
    return sum(s["value"] for s in series if s["labels"].get("job") == job)


def test_job_counts_add_up_across_two_workers_with_two_pool_processes_each(redis_db: int, tmp_path: Path) -> None:
    # Given two workers (2 prefork children each) sharing one Redis telemetry store
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    env = settings_env(url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(tmp_path),
                       extra={"ESF_TELEMETRY_PUSH_INTERVAL_S": "0.5"})
    fnd = apps.build(esf.Settings.from_env(env))
    workers = [Worker(env, tmp_path / f"w{i}.log", concurrency=2) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        # When 60 jobs run
        handles = [fnd.jobs.enqueue("t.add", i, 1) for i in range(60)]
        assert [h.wait(120) for h in handles] == [i + 1 for i in range(60)]
        # Then the cluster-wide counters are exact
        wait_for(lambda: _count(fnd, "esf.jobs.succeeded", "t.add") == 60, timeout=60,
                 message="60 successes counted cluster-wide")
        assert _count(fnd, "esf.jobs.started", "t.add") == 60
        fnd.telemetry.flush()
        wait_for(lambda: _count(fnd, "esf.jobs.enqueued", "t.add") == 60, timeout=30, message="60 enqueues")
        # And the work really was spread over several processes
        snap = fnd.telemetry.snapshot(prefix="esf.jobs.succeeded")
        assert snap["processes"] >= 3
    finally:
        for w in workers:
            w.discard()
        fnd.close()
