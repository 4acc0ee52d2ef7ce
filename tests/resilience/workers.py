"""Worker subprocesses of the resilience tests, each consuming its own queues."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from tests.jobs.harness import EsfProcess, settings_env, wait_for

if TYPE_CHECKING:
    from esf.foundation import Foundation
    from tests.servers import PrivateRedis

APP = "tests.resilience.apps:make"


class QueueWorker(EsfProcess):
    """``esf worker --queues …`` of tests.resilience.apps, in its own session (killed as a group)."""

    log_tail = None

    def __init__(self, env: Mapping[str, str], log_path: Path, *, queues: str,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(env, log_path, APP, ["worker", "--pool=solo", "--concurrency=1", f"--queues={queues}",
                                              "--loglevel=INFO", *extra_args])

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
        return " ready." in self.log()


def worker_waiting_for(server: PrivateRedis, tmp_path: Path,
                       extra: Mapping[str, str] | None = None) -> tuple[QueueWorker, dict[str, str]]:
    """A worker whose Redis broker ``server`` is down at its start, seen trying to connect (and not exiting);
    killed here if it is not."""
    env = settings_env(server.url, data_dir=str(tmp_path / "data"), extra={
        "ESF_RESILIENCE_REDIS_CONNECT_TIMEOUT_S": "1", "ESF_RESILIENCE_REDIS_TIMEOUT_S": "2", **(extra or {})})
    worker = QueueWorker(env, tmp_path / "worker.log", queues="default")
    try:
        wait_for(lambda: "Cannot connect" in worker.log() or worker.proc.poll() is not None, timeout=60,
                 message="the worker's first connection attempt")
        assert worker.proc.poll() is None, worker.log()[-3000:]
    except BaseException:
        worker.kill()
        raise
    return worker, env


def app_foundation(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Foundation:
    """tests.resilience.apps' Foundation in this process, on ``env`` (set in the environment it reads)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tests.resilience.apps import make

    return make()


def charge_runs(fnd: Foundation, broker_url: str) -> None:
    """Enqueue one ``tests.resilience.charge`` job and wait until a worker has run it."""
    client: redis.Redis[bytes] = redis.Redis.from_url(broker_url)
    fnd.jobs.get("tests.resilience.charge").enqueue(1)
    wait_for(lambda: client.llen("test:done") == 1, timeout=90, message="the job to run")
