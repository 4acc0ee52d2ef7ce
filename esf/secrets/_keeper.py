"""The keeper thread: each process renews its own token and leases and re-reads what it watches."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._service import SecretsService

__all__ = ["Keeper"]

log = logging.getLogger("esf.secrets")

#: Shortest wait between two checks of the thread (seconds).
MIN_WAIT_S = 0.2


class Keeper:
    """A daemon thread per process, started by the first lease or subscription (``secrets.refresh_thread``).

    Leases, the backend token and subscribers live in one process: no job on a broker can renew
    or notify them for it. The thread renews each lease at its renewal point and runs a full
    :meth:`SecretsService.refresh` every ``refresh_interval_s`` (token upkeep, a new read of the
    watched and subscribed paths, a check of every lease with the backend). A forked child
    inherits the state but not the thread: :meth:`after_fork` forgets it, and the child starts its
    own on its next lease or subscription.
    """

    def __init__(self, service: SecretsService) -> None:
        self._service = service
        self._lock = threading.Lock()
        #: This process's thread; None until started (and in a forked child).
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set when a lease is issued: the thread recomputes when to wake.
        self._wake = threading.Event()
        self._last_full = time.monotonic()

    def after_fork(self) -> None:
        """In a forked child (its service's ``after_fork``): the parent's thread is not here, and may have held
        the lock or been waiting on the wake-up at the fork; a closed keeper stays closed."""
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()

    @property
    def running(self) -> bool:
        """Whether this process's thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def ensure(self, *, wake: bool = False) -> None:
        """Start the thread in this process unless it runs (or is turned off, or closed).

        Parameters:
            wake: a new lease was issued: the running thread recomputes its next renewal point.
        """
        if self._thread is not None or not self._service.settings.refresh_thread or self._stop.is_set():
            if wake:
                self._wake.set()
            return
        with self._lock:
            if self._thread is not None:
                return
            self._last_full = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="esf-secrets-keeper", daemon=True)
            self._thread.start()

    def _wait_s(self) -> float:
        full_in = self._service.settings.refresh_interval_s - (time.monotonic() - self._last_full)
        lease_in = self._service.leases.next_renewal_in()
        return max(MIN_WAIT_S, min(full_in, lease_in if lease_in is not None else full_in))

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self._wait_s())
            if self._stop.is_set():
                return
            if woken:
                self._wake.clear()
                continue  # new leases: compute the next renewal point again
            try:
                if time.monotonic() - self._last_full >= self._service.settings.refresh_interval_s:
                    self._last_full = time.monotonic()
                    self._service.refresh()
                else:
                    self._service.leases.refresh_all()
            except Exception as exc:  # the backend is down: the next round tries again
                log.warning("secrets: background refresh failed: %s", type(exc).__name__)

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=5)
