"""The push of one process's increments to the shared store, and the background thread that drives it.

Emitting a metric never waits on I/O: every ``push_interval_s`` the thread takes
the deltas since the last push and writes them to the store; every
``export_interval_s`` it also hands a batch to the exporters. A push the store
refused is kept (``pending``) and delivered first next time, so an outage delays
increments but loses none.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from ..errors import EsfError
from ._aggregate import DeltaTracker, LocalWindows, PushBatch
from ._model import SeriesState
from ._store import SnapshotStore

log = logging.getLogger("esf.telemetry")

__all__ = ["Pusher"]


class Pusher:
    """Pushes one process's increments to ``store`` (``None``: counts windows only) on a daemon thread.

    Parameters
    ----------
    store:
        The shared store, or ``None`` (this process only).
    node:
        This host's name; with the pid and a random token it makes :attr:`proc_id`.
    states:
        Reads the process's current series (called under the push lock).
    export:
        Offers one batch to the exporters (called every ``export_interval_s``).
    push_interval_s, export_interval_s:
        Periods of the thread (seconds).

    A forked child builds a new Pusher: the parent's thread, lock and pending batch stay the parent's.
    """

    def __init__(
        self,
        store: SnapshotStore | None,
        node: str,
        states: Callable[[], dict[str, SeriesState]],
        export: Callable[[], object],
        push_interval_s: float,
        export_interval_s: float,
    ) -> None:
        self.store = store
        self.proc_id = f"{node}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.windows = LocalWindows()
        self.pending: PushBatch | None = None
        self.store_error: str | None = None
        self.last_push: float | None = None
        self.thread: threading.Thread | None = None
        self._states = states
        self._export = export
        self._push_interval_s = push_interval_s
        self._export_interval_s = export_interval_s
        self._lock = threading.Lock()
        self._tracker = DeltaTracker()
        self._seq = 0
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        """Start the thread unless it runs (or the pusher was stopped)."""
        if self.thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="esf-telemetry", daemon=True)
                self.thread.start()

    def _loop(self) -> None:
        next_export = time.monotonic() + self._export_interval_s
        while not self._stop.wait(self._push_interval_s):
            try:
                self.flush()
                if time.monotonic() >= next_export:
                    next_export = time.monotonic() + self._export_interval_s
                    self._export()
            except Exception:  # the loop must survive anything
                log.exception("telemetry: background flush failed")

    def flush(self, *, final: bool = False) -> bool:
        """Push the increments since the last push now. Returns whether everything was pushed."""
        with self._lock:
            for _ in range(2):  # a pending (retried) batch first, then a fresh one
                if self.pending is None:
                    states = self._states()
                    batch = self._tracker.take(states, self.proc_id, self._seq + 1, time.time(), final)
                    self.windows.add(batch.window_start, batch.counters)
                    if self.store is None:
                        self._seq = batch.seq
                        return True
                    self.pending = batch
                    fresh = True
                else:
                    fresh = False
                assert self.store is not None
                try:
                    self.store.push(self.pending)
                except EsfError as exc:
                    if self.store_error is None:
                        log.warning("telemetry: cannot push to the store, will retry: %s", exc)
                    self.store_error = str(exc)
                    return False
                self._seq = self.pending.seq
                self.pending = None
                self.store_error = None
                self.last_push = time.time()
                if fresh:
                    return True
            return True

    def stop(self, timeout_s: float) -> None:
        """Stop the thread, waiting at most ``timeout_s`` seconds for it."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout_s)
