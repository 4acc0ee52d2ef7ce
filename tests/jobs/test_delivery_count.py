"""The delivery counter counts executions that never finished, not restores before a job ran."""

from __future__ import annotations

import uuid
from pathlib import Path

from esf.foundation import Foundation

from .conftest import Broker
from .harness import Worker, wait_for

#: Seconds before the held job is due: longer than the warm restarts below take.
COUNTDOWN_S = 45
#: Warm restarts while the job is held: more than ESF_JOBS_MAX_DELIVERIES (3) in the test settings.
RESTARTS = 4


def test_an_eta_job_held_through_more_warm_restarts_than_max_deliveries_runs_once_and_is_not_dead_lettered(
    broker: Broker, fnd: Foundation, tmp_path: Path
) -> None:
    env = {**broker.env, "ESF_WORKERS_SOFT_SHUTDOWN_TIMEOUT_S": "1"}
    worker = Worker(env, tmp_path / "w0.log", concurrency=1)
    try:
        worker.wait_ready()
        # Given a job due in COUNTDOWN_S seconds
        key = uuid.uuid4().hex
        handle = fnd.jobs.enqueue("t.record", key, 0, countdown=COUNTDOWN_S)
        # When its worker is warm-restarted RESTARTS times before it is due
        for i in range(RESTARTS):
            # (the worker holds the job until it is due, on RabbitMQ too: Celery has no native
            # delayed delivery for direct exchanges)
            wait_for(lambda log=worker.log_path: f"t.record[{handle.id}] received" in log.read_text(errors="replace"),
                     timeout=60, message="the worker to hold the job")
            assert worker.stop() == 0
            worker = Worker(env, tmp_path / f"w{i + 1}.log", concurrency=1)
            worker.wait_ready()
        # Then it runs once, succeeds, and is not dead-lettered
        assert handle.wait(COUNTDOWN_S + 90) == 1
        assert int(fnd.jobs.coordinator.get(f"exec:{key}") or 0) == 1
        assert [e for e in fnd.jobs.dlq.entries() if e.job_id == handle.id] == []
    finally:
        worker.discard()
