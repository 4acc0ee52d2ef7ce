"""A steady flow of jobs sent from a thread while a test injects its fault."""

from __future__ import annotations

import threading
import time
from typing import Any

from .ledger import Ledger


class JobFlow:
    """Enqueue ``f.effect`` jobs at ``rate`` per second from a thread.

    A job counts as sent only once ``enqueue`` returned; an enqueue that raised is counted as
    refused (the caller was told: nothing was silently dropped) and its key is not in the ledger.
    """

    def __init__(self, job: Any, ledger: Ledger, count: int, rate: float, seconds: float = 0.0,
                 prefix: str = "k") -> None:
        self.job = job
        self.ledger = ledger
        self.count = count
        self.rate = rate
        self.seconds = seconds
        self.prefix = prefix
        self.refused: list[str] = []
        self.errors: list[str] = []
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="job-flow", daemon=True)

    def start(self) -> JobFlow:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the sender was still blocked after {timeout} s"

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.count):
            key = f"{self.prefix}{i}"
            try:
                self.job.enqueue(self.ledger.scenario, key, self.seconds)
            except Exception as exc:  # the broker refused: the caller knows
                self.refused.append(key)
                if len(self.errors) < 3:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                self.ledger.sent(key)
                self.sent += 1
            pause = start + (i + 1) / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
