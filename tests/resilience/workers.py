"""Worker subprocesses of the resilience tests, each consuming its own queues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.jobs.harness import ROOT

APP = "tests.resilience.apps:make"


class QueueWorker:
    """``esf worker --queues …`` of tests.resilience.apps, in its own session (killed as a group)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, queues: str,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_") or k.startswith("ESF_TEST_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esf.cli", "--app", APP, "worker", "--pool=solo", "--concurrency=1",
             f"--queues={queues}", "--loglevel=INFO", *extra_args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
        return " ready." in self.log()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()
