"""Fault injection with real worker processes: SIGKILL, crash loops, leases, a Redis restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.conftest import REDIS_HOST, REDIS_PORT, lease_redis_db
from tests.servers import PrivateRedis

from . import apps
from .conftest import Broker
from .harness import Worker, settings_env, wait_for

pytestmark = pytest.mark.slow


def counter(fnd: Foundation, key: str) -> int:
    return int(fnd.jobs.coordinator.get(key) or 0)


def test_a_worker_killed_mid_job_loses_nothing_and_the_job_completes_once_elsewhere(
    broker: Broker, fnd: Foundation, tmp_path: Path
) -> None:
    # Given a worker running a long job
    first = Worker(broker.env, tmp_path / "a.log", concurrency=1)
    first.wait_ready()
    key = uuid.uuid4().hex
    handle = fnd.jobs.enqueue("t.record", key, 4)
    wait_for(lambda: counter(fnd, f"exec:{key}") == 1, timeout=60, message="job started")
    # When the whole worker is killed with SIGKILL mid-job
    first.kill()
    assert counter(fnd, f"done:{key}") == 0
    # Then another worker picks it up and it completes exactly once
    second = Worker(broker.env, tmp_path / "b.log", concurrency=1)
    try:
        second.wait_ready()
        assert handle.wait(90) == 1
        assert counter(fnd, f"exec:{key}") == 2
        assert counter(fnd, f"done:{key}") == 1
    finally:
        second.discard()


def test_a_job_that_keeps_killing_its_worker_ends_in_the_dlq_and_the_queue_drains(
    broker: Broker, fnd: Foundation, tmp_path: Path
) -> None:
    # Given a job whose handler kills its pool process every time
    worker = Worker(broker.env, tmp_path / "w.log", concurrency=1)
    try:
        worker.wait_ready()
        key = uuid.uuid4().hex
        handle = fnd.jobs.enqueue("t.crash", key)
        # Then after max_deliveries (3) it is dead-lettered instead of looping
        entry = wait_for(lambda: next((e for e in fnd.jobs.dlq.entries() if e.job_id == handle.id), None),
                         timeout=120, interval=0.5, message="crash-looping job in the DLQ")
        assert entry.reason == "delivery_limit"
        assert 3 <= counter(fnd, f"crash:{key}") <= 4
        # And it carries its arguments and the time of its last attempt
        assert entry.job == "t.crash" and entry.args == [key] and entry.queue == broker.queue
        assert entry.last_attempt_at is not None and entry.last_attempt_at <= entry.dead_lettered_at
        # And the worker is still alive and drains other jobs
        assert fnd.jobs.enqueue("t.add", 1, 1).wait(60) == 2
    finally:
        worker.discard()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_job_longer_than_the_visibility_timeout_runs_once_while_its_worker_lives(
    broker: Broker, fnd: Foundation, tmp_path: Path
) -> None:
    # Given a visibility timeout of 6 s and two workers
    workers = [Worker(broker.env, tmp_path / f"w{i}.log", concurrency=1) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        key = uuid.uuid4().hex
        # When a job runs for 14 s (more than twice the visibility timeout)
        handle = fnd.jobs.enqueue("t.record", key, 14)
        assert handle.wait(90) == 1
        # Then it ran exactly once: the lease kept it from being delivered again
        assert counter(fnd, f"exec:{key}") == 1
    finally:
        for w in workers:
            w.discard()


def test_a_redis_restart_mid_run_loses_no_job_and_workers_reconnect(private_redis: PrivateRedis,
                                                                     tmp_path: Path) -> None:
    with lease_redis_db() as db:
        # Given a worker on a Redis broker with AOF, counters on another Redis
        queue = f"q-{uuid.uuid4().hex[:8]}"
        env = settings_env(f"redis://127.0.0.1:{private_redis.port}/0", queues=(queue,),
                           redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", data_dir=str(tmp_path))
        fnd = apps.build(esf.Settings.from_env(env))
        worker = Worker(env, tmp_path / "w.log", concurrency=2)
        try:
            worker.wait_ready()
            keys = [f"{uuid.uuid4().hex}" for _ in range(30)]
            for k in keys:
                fnd.jobs.enqueue("t.record", k, 0.3)
            wait_for(lambda: sum(counter(fnd, f"done:{k}") > 0 for k in keys) >= 3, timeout=60,
                     message="a few jobs done")
            # When the broker restarts mid-run
            private_redis.stop()
            time.sleep(2)
            private_redis.start()
            # Then the worker reconnects by itself and every job completes
            wait_for(lambda: all(counter(fnd, f"done:{k}") > 0 for k in keys), timeout=180, interval=1,
                     message="every job done after the restart")
            assert fnd.jobs.enqueue("t.add", 2, 2).wait(60) == 4
        finally:
            worker.discard()
            fnd.close()


def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(broker: Broker, fnd: Foundation,
                                                                   tmp_path: Path) -> None:
    worker = Worker(broker.env, tmp_path / "w.log", concurrency=1)
    worker.wait_ready()
    key = uuid.uuid4().hex
    handle = fnd.jobs.enqueue("t.record", key, 3)
    wait_for(lambda: counter(fnd, f"exec:{key}") == 1, timeout=60, message="job started")
    # When the worker gets SIGTERM mid-job (warm shutdown)
    code = worker.stop(timeout=60)
    # Then the job finished before the worker exited, once
    assert code == 0
    assert counter(fnd, f"done:{key}") == 1
    assert handle.status() == "succeeded"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_worker_whose_consumer_stalls_is_restarted_and_drains_its_queue(
    broker: Broker, fnd: Foundation, tmp_path: Path
) -> None:
    # Given a worker whose consumer stops fetching (as after celery#8082), simulated by cancelling it,
    # and a stall limit of 3 s (the harness's 10 s would only make the test wait longer)
    worker = Worker({**broker.env, "ESF_JOBS_STALLED_CONSUMER_RESTART_S": "3"}, tmp_path / "w.log", concurrency=1)
    try:
        worker.wait_ready()
        # (limit=1: the one worker's reply ends the broadcast, which otherwise waits out its whole timeout)
        replies = fnd.celery.control.cancel_consumer(broker.queue, reply=True, timeout=10, limit=1)
        assert replies, "the worker did not answer the cancel_consumer command"
        # When a job waits in its queue while it holds none
        handle = fnd.jobs.enqueue("t.add", 20, 1)
        # Then the watch restarts the worker in place (stall limit 3 s) and the job runs
        assert handle.wait(120) == 21
        assert "consumer is stalled" in worker.log()
        assert worker.proc.poll() is None
    finally:
        worker.discard()
