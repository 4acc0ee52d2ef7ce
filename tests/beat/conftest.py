"""Settings and `esf beat` subprocesses for the scheduler tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.jobs.harness import ROOT

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


class BeatProcess:
    """An `esf beat` subprocess running tests.beat.app."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, tick: float = 0.2, lease_ttl: float = 2.0) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_") or k.startswith("ESF_TEST_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esf.cli", "--app", "tests.beat.app:make", "beat", f"--tick={tick}",
             f"--lease-ttl={lease_ttl}"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"beat exited early:\n{self.log()}")
        return b": started" in self.log_path.read_bytes()

    def leading(self) -> bool:
        return b"now leading" in self.log_path.read_bytes()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
