"""The dispatcher: a thread that ticks every declared subscription when woken, and at least every poll.

It runs in every worker's main process (and in any process that calls
``fnd.subscriptions.start_dispatcher()``). Wake-ups only make it look sooner:

- on PostgreSQL it listens on ``esf_events`` (a trigger notifies on every
  append's commit) and ``esf_subscriptions`` (a finished batch frees its
  partition), on a connection of its own;
- on SQLite it polls.

What is delivered is decided by the stored cursor and batches, never by a
notification: a notification lost (the listening connection dropped, the
server restarted) delays delivery until the next poll
(``subscriptions.poll_interval_s``), and the dispatcher ticks at once after
it (re)connects its listener. When the process dies mid-tick its transaction
is rolled back and another process's dispatcher, or this one restarted, goes
on from the same state.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._sqlite import fork_guard

if TYPE_CHECKING:
    from ..jobs import JobService
    from ..lifecycle import ServiceContext
    from ._service import SubscriptionService

log = logging.getLogger("esf.subscriptions")

#: Channels the PostgreSQL listener waits on.
CHANNELS = ("esf_events", "esf_subscriptions")
#: Longest wait on the listener before looking at the stop flag, in seconds.
STOP_SLICE_S = 0.25


class Dispatcher:
    """Ticks the subscriptions of ``service`` in a daemon thread (see the module docstring)."""

    def __init__(self, service: SubscriptionService, context: ServiceContext, jobs: Callable[[], JobService]) -> None:
        self._service = service
        self._context = context
        self._jobs = jobs
        settings = context.settings.subscriptions
        self.poll_interval_s = settings.poll_interval_s
        self.wakeups = settings.wakeups
        self.lag_interval_s = settings.lag_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Any = None
        self._lag_at = 0.0
        #: Subscriptions to tick on the next round, when only batch completions woke it (None: all).
        self._names: set[str] | None = None
        #: Wake-ups received (notifications), for tests and ``esf subscriptions list``.
        self.wakeups_seen = 0

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="esf-subscriptions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the listener; waits up to one poll interval plus a tick."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.poll_interval_s + 30)
        self._thread = None
        self._close_listener()

    def wake(self) -> None:
        """Tick as soon as possible."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            names, self._names = self._names, None
            try:
                self._guarded(functools.partial(self._service.dispatch, names))
            except Exception as exc:
                log.warning("subscriptions: dispatch failed (%s: %s); retrying", type(exc).__name__, exc)
                self._stop.wait(min(self.poll_interval_s, 1.0))
            self._guarded(self._report_lag)
            self._wait()

    def _guarded(self, work: Callable[[], object]) -> None:
        if not self._jobs().outbox.forking:
            work()
            return
        # A worker's main process forks at any time: no SQLite state may outlive a tick here
        # (see esf._sqlite); PostgreSQL connections are dropped by the child after the fork.
        with fork_guard:
            try:
                work()
            finally:
                engine = self._service.backend.engine  # type: ignore[attr-defined]
                if engine.dialect.name == "sqlite":
                    engine.dispose()

    def _wait(self) -> None:
        if self._stop.is_set() or self._wake.is_set():
            return
        if self.wakeups and self._listening():
            try:
                first = self._notified()
                if first is not None:
                    self.wakeups_seen += 1
                    # Coalesce the notifications already waiting into this one round.
                    notes = [first, *self._listener.notifies(timeout=0)]
                    if all(n.channel == "esf_subscriptions" for n in notes):
                        # Only partitions freed: tick just those subscriptions.
                        self._names = {n.payload for n in notes}
                return
            except Exception as exc:
                log.warning("subscriptions: the wake-up listener failed (%s: %s); polling until it is back",
                            type(exc).__name__, exc)
                self._close_listener()
        self._wake.wait(self.poll_interval_s)

    def _notified(self) -> Any:
        """Wait up to one poll interval for a notification, in short slices so that stop() is prompt.

        Returns:
            The first notification, or None when the interval passed (or stop/wake was asked).
        """
        deadline = time.monotonic() + self.poll_interval_s
        while not (self._stop.is_set() or self._wake.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for note in self._listener.notifies(timeout=min(left, STOP_SLICE_S), stop_after=1):
                return note
        return None

    def _listening(self) -> bool:
        """True when a listener is connected; connects one on PostgreSQL (then ticks at once)."""
        if self._listener is not None:
            return True
        url = self._context.settings.effective_database_url
        if not url.startswith("postgres"):
            return False
        try:
            import psycopg

            dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
            # A plain connection of its own, outside the store's pool and its read timeout: waiting
            # for a notification is not a call the server owes an answer to. Each wait is bounded by
            # its slice; a silent server only delays wake-ups until the next poll.
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name="esf-subscriptions")
            for channel in CHANNELS:
                conn.execute(f"LISTEN {channel}")
        except Exception as exc:
            log.warning("subscriptions: cannot listen for wake-ups (%s); polling", type(exc).__name__)
            return False
        self._listener = conn
        # Anything committed before LISTEN took effect sent no wake-up to this connection.
        self._wake.set()
        return True

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("subscriptions: closing the listener failed", exc_info=True)

    def _report_lag(self) -> None:
        if not self._context.settings.telemetry.enabled:
            return
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        self._lag_at = now
        try:
            telemetry = self._context.telemetry()
            for sub in self._service.declared():
                status = self._service.status(sub.name)
                labels = {"subscription": sub.name}
                telemetry.gauge("esf.subscriptions.lag_events", labels).set(status.lag_events)
                telemetry.gauge("esf.subscriptions.lag_seconds", labels).set(status.lag_seconds)
        except Exception as exc:
            log.debug("subscriptions: lag not reported (%s: %s)", type(exc).__name__, exc)
