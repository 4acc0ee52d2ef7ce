"""Worker subprocesses for job tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def settings_env(broker_url: str, *, queues: tuple[str, ...] = ("default",), redis_url: str | None = None,
                 data_dir: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "ESF_JOBS_QUEUES": ",".join(queues),
        "ESF_JOBS_DEFAULT_QUEUE": queues[0],
        "ESF_JOBS_VISIBILITY_TIMEOUT_S": "6",
        "ESF_JOBS_RESTORE_INTERVAL_S": "1",
        "ESF_JOBS_MAX_DELIVERIES": "3",
        "ESF_JOBS_HARD_TIMEOUT_GRACE_S": "1",
        "ESF_JOBS_REDIS_DURABILITY_CHECK": "off",
        "ESF_JOBS_STALLED_CONSUMER_RESTART_S": "10",
        # Service queues of their own: tests share one RabbitMQ vhost.
        "ESF_JOBS_SERVICE_NAMESPACE": f"esf-{uuid.uuid4().hex[:8]}",
    }
    if broker_url:
        env["ESF_BROKER_URL"] = broker_url
    if redis_url:
        env["ESF_REDIS_URL"] = redis_url
    if data_dir:
        env["ESF_DATA_DIR"] = data_dir
    env.update(extra or {})
    return env


class EsfProcess:
    """An ``esf`` command (``python -m esf.cli --app <app> <args>``) as a subprocess in a session of its own
    (killed as a group), its output appended to ``log_path``; the ``ESF_*`` variables it sees are ``env``'s."""

    #: How many characters of the end of the log :meth:`log` returns (``None``: all of it).
    log_tail: int | None = 6000

    def __init__(self, env: Mapping[str, str], log_path: Path, app: str, args: Sequence[str]) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_") or k.startswith("ESF_TEST_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esf.cli", "--app", app, *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if self.log_tail is None else text[-self.log_tail:]

    def kill(self) -> None:
        """SIGKILL the process and its children (a worker's pool processes) at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a worker's warm shutdown); SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


class Worker(EsfProcess):
    """An `esf worker` subprocess for tests.jobs.apps."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, concurrency: int = 2, pool: str = "prefork",
                 app: str = "tests.jobs.apps:make") -> None:
        super().__init__(env, log_path, app,
                         ["worker", f"--concurrency={concurrency}", f"--pool={pool}", "--loglevel=INFO"])

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout} s:\n{self.log()}")

    def __enter__(self) -> Worker:
        """Wait until the worker is ready (killing it if it is not); leaving the block discards it: a test
        that looks at the worker's shutdown calls :meth:`stop` itself inside the block."""
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def discard(self) -> None:
        """End a worker whose shutdown the test does not look at (fixture teardown): SIGKILL, no warm shutdown.

        A warm shutdown costs 2-6 s of Celery's pool teardown per worker; a teardown checks nothing of it,
        and the test's queues, Redis database and PostgreSQL database are dropped after it anyway.
        """
        self.kill()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
