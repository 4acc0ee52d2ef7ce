"""Settings and `esf beat` subprocesses for the scheduler tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.jobs.harness import EsfProcess

from . import app


def beat_env(kind: str, *, redis_url: str | None, data_dir: Path) -> dict[str, str]:
    """ESF_* settings: ``redis`` (Redis broker, store and coordinator) or ``sqlite`` (SQLite store and
    coordinator under ``data_dir``, no server; the in-memory broker, since the tests count fires at enqueue)."""
    env = {"ESF_DATA_DIR": str(data_dir), "ESF_JOBS_QUEUES": "default,other",
           "ESF_JOBS_DEFAULT_QUEUE": "default", "ESF_JOBS_REDIS_DURABILITY_CHECK": "off",
           # These tests count the fires of their own schedules: no default service schedules.
           "ESF_SERVICES_SCHEDULES": "false"}
    if kind == "redis":
        assert redis_url
        env["ESF_BROKER_URL"] = redis_url
    else:
        env["ESF_BROKER_URL"] = "memory://"
    return env


@pytest.fixture(params=["redis", "sqlite"])
def env(request: pytest.FixtureRequest, data_dir: Path) -> dict[str, str]:
    """Settings for each store: Redis, and SQLite."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return beat_env(request.param, redis_url=redis_url, data_dir=data_dir)


@pytest.fixture
def fire_log(tmp_path: Path) -> Path:
    return tmp_path / "fires.jsonl"


@pytest.fixture
def fnd(env: dict[str, str], fire_log: Path) -> Iterator[Foundation]:
    f = app.build(esf.Settings.from_env(env), fire_log=str(fire_log))
    try:
        yield f
    finally:
        f.close()


class BeatProcess(EsfProcess):
    """An `esf beat` subprocess running tests.beat.app."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, tick: float = 0.2, lease_ttl: float = 2.0) -> None:
        super().__init__(env, log_path, "tests.beat.app:make", ["beat", f"--tick={tick}", f"--lease-ttl={lease_ttl}"])

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"beat exited early:\n{self.log()}")
        return b": started" in self.log_path.read_bytes()

    def leading(self) -> bool:
        return b"now leading" in self.log_path.read_bytes()

    def stop(self, timeout: float = 30) -> int | None:
        return super().stop(timeout)
