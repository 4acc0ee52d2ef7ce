"""``jobs.redis_durability_check = "error"`` with the Redis broker down at start: the worker starts, and checks
the broker once it answers (it stops before consuming when that Redis turns out not to be durable)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.jobs.harness import wait_for
from tests.resilience.workers import QueueWorker, app_foundation, charge_runs, worker_waiting_for
from tests.servers import PrivateRedis

pytestmark = pytest.mark.slow


def _worker_waiting_for(server: PrivateRedis, tmp_path: Path) -> tuple[QueueWorker, dict[str, str]]:
    """A worker in ``error`` mode started while ``server`` is down, seen waiting for it."""
    worker, env = worker_waiting_for(server, tmp_path, {"ESF_JOBS_REDIS_DURABILITY_CHECK": "error"})
    assert "its durability is checked when it does" in worker.log()
    return worker, env


def test_a_worker_in_error_mode_starts_before_its_durable_redis_and_runs_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis(tmp_path / "redis")  # AOF, appendfsync always, noeviction: durable
    worker, env = _worker_waiting_for(server, tmp_path)
    try:
        server.start()
        fnd = app_foundation(env, monkeypatch)
        try:
            charge_runs(fnd, server.url)
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
        fnd = app_foundation(env, monkeypatch)
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
