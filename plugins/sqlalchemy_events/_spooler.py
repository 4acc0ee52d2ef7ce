"""Spool appends while the database is unreachable, and flush them in order when it is back.

- the store's :class:`~esf.resilience.CircuitBreaker` (:func:`database_breaker`):
  after three consecutive "unreachable" errors it opens for a cool-down
  (doubling up to 30 s); while open, appends go straight to the spool instead
  of waiting for a connect timeout, and appends that cannot be spooled fail
  fast with :class:`~esf.errors.CircuitOpen`.
- :class:`Spooler`: once one append of this process went to the spool, the
  following ones do too until the spool is empty again, so that each
  stream's events are written in the order they were appended. A daemon
  thread drains the spool (one entry = one original batch = one
  transaction), backing off exponentially (bounded by ``max_backoff_s``)
  while the database stays unreachable. An entry the reachable database
  keeps refusing (any error but "unreachable", "duplicate" and "invalid") is
  retried with the same backoff, and after ``max_attempts`` failures moved to
  the spool's quarantine, so the entries after it are written in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from esf.errors import DuplicateEventId, ServiceUnavailable, SpoolQuarantined, Timeout, ValidationError
from esf.events._contract import AppendResult, PendingAppend
from esf.events._model import StoredEvent
from esf.events._spool import Spool
from esf.events._validation import PreparedEvent
from esf.resilience import CircuitBreaker, dependency_breaker

__all__ = ["Spooler", "database_breaker"]

log = logging.getLogger("esf.events.spool")

#: Write one spooled batch; raises ServiceUnavailable when the database is unreachable.
WriteBatch = Callable[[Sequence[PreparedEvent]], object]
#: Fetch stored events by id, in the given order.
FetchEvents = Callable[[Sequence[str]], list[StoredEvent]]
#: Failed writes of one spooled entry (the database reachable) before it is quarantined.
DEFAULT_MAX_ATTEMPTS = 10


def _describe(exc: BaseException) -> str:
    """``Type: message`` of a write failure, without the SQL parameters SQLAlchemy adds to its own text."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return f"{type(exc).__name__} ({type(orig).__name__}): {first}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def database_breaker(name: str = "events.database") -> CircuitBreaker:
    """The event store's breaker: opens after 3 unreachable errors for 1 s, doubling up to 30 s."""
    return dependency_breaker(name)


class Spooler:
    """Owns the spool file of one store and its flusher thread.

    Parameters:
        max_attempts: failed writes of one entry, while the database is
            reachable, before the entry is quarantined (at least 1).

    Raises:
        ValidationError: ``max_attempts`` is below 1.
    """

    def __init__(
        self,
        spool: Spool,
        write: WriteBatch,
        fetch: FetchEvents,
        *,
        breaker: CircuitBreaker | None = None,
        min_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        batch_entries: int = 100,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValidationError(f"spool max_attempts: must be an integer of at least 1, not {max_attempts!r}")
        self.max_attempts = max_attempts
        self.spool = spool
        self.breaker = breaker or database_breaker()
        self._write = write
        self._fetch = fetch
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch_entries = batch_entries
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = spool.depth() > 0
        if self._active:
            log.warning("event spool %s holds %d events from an earlier run; flushing", spool.path, spool.depth())
            with self._cond:
                self._start_locked()

    # -- appending --------------------------------------------------------

    def should_spool(self) -> bool:
        """True when an append must go to the spool (spool not drained yet, or circuit open)."""
        return self._active or self.breaker.is_open()

    def put(self, prepared: Sequence[PreparedEvent], cause: BaseException | None = None) -> AppendResult:
        """Spool one batch durably and return its pending result."""
        with self._cond:
            entry = self.spool.put(list(prepared))
            self._active = True
            self._start_locked()
            self._cond.notify_all()
        log.warning(
            "event store unreachable%s: %d event(s) spooled locally (entry %d); they will be written when it is back",
            f" ({type(cause).__name__})" if cause else "",
            len(prepared),
            entry,
        )
        ids = tuple(dict.fromkeys(p.event_id for p in prepared))
        return AppendResult(pending=PendingAppend(ids, entry, self._wait))

    def depth(self) -> int:
        """Events waiting in the spool file (all processes of the node)."""
        return self.spool.depth()

    def retry(self, entry_ids: list[int] | None = None) -> list[int]:
        """Move quarantined entries (all when ``entry_ids`` is None) back into the spool and flush; returns ids."""
        with self._cond:
            ids = self.spool.retry(entry_ids)
            if ids:
                self._active = True
                self._start_locked()
                self._cond.notify_all()
        if ids:
            log.warning("quarantined spool entries %s put back in the spool; flushing", ids)
        return ids

    # -- waiting ----------------------------------------------------------

    def _wait(self, pending: PendingAppend, timeout: float | None) -> list[StoredEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.spool.contains(pending.spool_id):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(
                    f"{len(pending.event_ids)} spooled event(s) not written within {timeout} s; "
                    "the database is still unreachable (they stay spooled)",
                    spool_id=pending.spool_id,
                )
            with self._cond:
                self._cond.wait(0.2 if remaining is None else min(remaining, 0.2))
        error = self.spool.dead_error(pending.spool_id)
        if error is not None:
            raise DuplicateEventId(f"spooled events could not be written: {error}", spool_id=pending.spool_id)
        error = self.spool.quarantine_error(pending.spool_id)
        if error is not None:
            raise SpoolQuarantined(
                f"spooled entry {pending.spool_id} kept failing and was quarantined (its events are kept, not "
                f"written): {error}; see `esf events spool list`, then `esf events spool retry {pending.spool_id}`",
                spool_id=pending.spool_id,
            )
        return self._fetch(pending.event_ids)

    # -- flushing ---------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="esf-events-spool", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            try:
                with self.spool.drain_lock() as mine:
                    status = self._drain_once() if mine else "busy"
            except Exception:  # the spool file itself failed (disk full, I/O error): keep the thread, retry
                log.exception("event spool %s: draining failed; will retry", self.spool.path)
                status = "error"
            if status == "progress":
                backoff = self.min_backoff_s
                continue
            if status == "empty":
                with self._cond:
                    if self.spool.depth() == 0:
                        self._active = False
                        self._thread = None  # a later put() starts a new flusher
                        self._cond.notify_all()
                        return
                continue
            # unreachable, busy (another process drains) or unexpected error: back off.
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _drain_once(self) -> str:
        entries = self.spool.peek(self.batch_entries)
        if not entries:
            return "empty"
        for entry in entries:
            if self._stop.is_set():
                return "progress"
            try:
                self._write(entry.events)
            except ServiceUnavailable:
                self.breaker.record_failure()
                return "unreachable"
            except (DuplicateEventId, ValidationError) as exc:
                # Can never succeed: keep it aside (never drop it) and say so loudly.
                log.error("spooled entry %d can never be written and was moved to the dead table: %s", entry.id, exc)
                self.spool.bury(entry.id, f"[{exc.code}] {exc}")
            except Exception as exc:
                # The database answered but refused this entry: retry it a bounded number of times, then set
                # it aside so that it does not block the entries after it.
                error = _describe(exc)
                attempts = self.spool.record_failure(entry.id, error)
                if attempts < self.max_attempts:
                    log.warning("spooled entry %d could not be written (attempt %d of %d): %s; will retry",
                                entry.id, attempts, self.max_attempts, type(exc).__name__)
                    return "error"
                log.error("spooled entry %d failed %d times and was moved to the quarantine (`esf events spool "
                          "list`); the entries after it go on: %s", entry.id, attempts, type(exc).__name__)
                self.spool.quarantine(entry.id, error)
            else:
                self.breaker.record_success()
                self.spool.remove(entry.id)
            with self._cond:
                self._cond.notify_all()
        return "progress"

    def flush(self, timeout: float | None = None) -> bool:
        """Block until the spool is empty (its entries written or quarantined: True) or ``timeout`` seconds passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.spool.depth() > 0:
            with self._cond:
                if self._thread is None or not self._thread.is_alive():
                    self._start_locked()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(0.2 if remaining is None else min(remaining, 0.2))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher thread (spooled events stay on disk)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.spool.close()
