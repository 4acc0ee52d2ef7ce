"""``jobs.redis_durability_check = "error"`` with the Redis broker down at start: the worker starts, and checks
the broker once it answers (it stops before consuming when that Redis turns out not to be durable)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.jobs.harness import settings_env, wait_for
from tests.resilience.workers import QueueWorker
from tests.servers import PrivateRedis

pytestmark = pytest.mark.slow


def _worker_waiting_for(server: PrivateRedis, tmp_path: Path) -> tuple[QueueWorker, dict[str, str]]:
    """A worker in ``error`` mode started while ``server`` is down, seen waiting for it."""
    env = settings_env(server.url, data_dir=str(tmp_path / "data"),
                       extra={"ESF_JOBS_REDIS_DURABILITY_CHECK": "error",
                              "ESF_RESILIENCE_REDIS_CONNECT_TIMEOUT_S": "1", "ESF_RESILIENCE_REDIS_TIMEOUT_S": "2"})
    worker = QueueWorker(env, tmp_path / "worker.log", queues="default")
    wait_for(lambda: "Cannot connect" in worker.log() or worker.proc.poll() is not None, timeout=60,
             message="the worker's first connection attempt")
    assert worker.proc.poll() is None, worker.log()[-3000:]
    assert "its durability is checked when it does" in worker.log()
    return worker, env


def test_a_worker_in_error_mode_starts_before_its_durable_redis_and_runs_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis(tmp_path / "redis")  # AOF, appendfsync always, noeviction: durable
    worker, env = _worker_waiting_for(server, tmp_path)
    try:
        server.start()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from tests.resilience.apps import make

        fnd = make()
        try:
            client: redis.Redis[bytes] = redis.Redis.from_url(server.url)
            fnd.jobs.get("tests.resilience.charge").enqueue(1)
            wait_for(lambda: client.llen("test:done") == 1, timeout=90, message="the job to run")
            assert "broker checked now that it answers" in worker.log()
        finally:
            fnd.close()
    finally:
        worker.kill()
        server.kill()


def test_a_worker_in_error_mode_stops_before_consuming_when_its_late_redis_is_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis(tmp_path / "redis", args=("--appendonly", "no"))  # keeps nothing on disk
    worker, env = _worker_waiting_for(server, tmp_path)
    try:
        server.start()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from tests.resilience.apps import make

        fnd = make()
        try:
            fnd.jobs.get("tests.resilience.charge").enqueue(1)
        finally:
            fnd.close()
        wait_for(lambda: worker.proc.poll() is not None, timeout=90, message="the worker to stop")
        assert worker.proc.returncode != 0
        lines = [line for line in worker.log().splitlines() if "the Redis broker is not durable" in line]
        assert lines and "jobs.redis_durability_check = 'error'" in lines[0], worker.log()[-3000:]
        client: redis.Redis[bytes] = redis.Redis.from_url(server.url)
        assert client.llen("test:done") == 0
        assert client.llen("default") == 1  # the job waits on its queue for a worker on a durable broker
    finally:
        worker.kill()
        server.kill()
