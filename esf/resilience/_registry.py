"""Named breakers of one Foundation: ``fnd.breaker("payments_api")`` and the breakers of ESF's own services."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import ValidationError
from ._breaker import BreakerState, CircuitBreaker, SharedState, StateListener

#: Breaker names: letters, digits, ``_ . -``, at most 100 characters.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def validate_breaker_name(name: object) -> str:
    """Return ``name`` when it is a valid breaker name, else raise ValidationError."""
    if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
        raise ValidationError(
            f"breaker name {name!r} is invalid (1-100 characters: letters, digits, '_', '.', '-')",
            errors={"name": "invalid"},
        )
    return name


class Guard(contextlib.ContextDecorator):
    """Runs a block or a function through one breaker: ``with fnd.breaker("api"):`` or ``@fnd.breaker("api")``.

    Entering raises :class:`~esf.errors.CircuitOpen` while the breaker is open (the block
    does not run); an exception of ``failure_on`` leaving the block counts as a failure,
    a normal exit as a success, any other exception as neither.
    """

    def __init__(self, breaker: CircuitBreaker, failure_on: tuple[type[BaseException], ...]) -> None:
        self.breaker = breaker
        self._failure_on = failure_on

    def __enter__(self) -> CircuitBreaker:
        if not self.breaker.allow():
            raise self.breaker.open_error()
        return self.breaker

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.breaker.record_success()
        elif isinstance(exc, self._failure_on):
            self.breaker.record_failure()


class Breakers:
    """Every named breaker of a Foundation, created on first use with the settings' defaults.

    Parameters:
        failure_threshold, reset_timeout_s, max_reset_timeout_s: defaults of new breakers.
        shared: the cluster-wide state (None: each process has its own).
        on_state_change: called on every state change of every breaker.
    """

    def __init__(self, *, failure_threshold: int, reset_timeout_s: float, max_reset_timeout_s: float | None,
                 shared: SharedState | None, on_state_change: StateListener | None = None) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.max_reset_timeout_s = max_reset_timeout_s
        self.shared = shared
        self._listener = on_state_change
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        """The breaker ``name`` (created closed on first use). Raises ValidationError for a bad name."""
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        validate_breaker_name(name)
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, failure_threshold=self.failure_threshold,
                                         reset_timeout_s=self.reset_timeout_s,
                                         max_reset_timeout_s=self.max_reset_timeout_s,
                                         on_state_change=self._listener, shared=self.shared)
                self._breakers[name] = breaker
        return breaker

    def adopt(self, breaker: CircuitBreaker) -> None:
        """List a service's own breaker here (health, state events) under its name."""
        with self._lock:
            if self._breakers.get(breaker.name) is breaker:
                return
            self._breakers[breaker.name] = breaker
        if self._listener is not None:
            breaker.add_listener(self._listener)

    def guard(self, name: str, failure_on: tuple[type[BaseException], ...] = (Exception,)) -> Guard:
        return Guard(self.get(name), failure_on)

    def names(self) -> list[str]:
        return sorted(self._breakers)

    def health(self) -> dict[str, Any]:
        """``{"status", "breakers": {name: snapshot}, "reason"}``: degraded while any breaker is not closed."""
        snapshots = {name: self._breakers[name].snapshot() for name in self.names()}
        not_closed = sorted(n for n, s in snapshots.items() if s["state"] != "closed")
        report: dict[str, Any] = {"status": "degraded" if not_closed else "ok", "breakers": snapshots}
        if not_closed:
            report["reason"] = "breaker open: " + ", ".join(f"{n} ({snapshots[n]['state']})" for n in not_closed)
        return report


class RateLimitedEvents:
    """Calls ``emit(name, state)`` at most once per ``interval_s`` for each breaker and state."""

    def __init__(self, emit: Callable[[str, BreakerState], None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, BreakerState], float] = {}
        self._lock = threading.Lock()
        #: State changes not recorded as events because of the rate limit.
        self.suppressed = 0

    def __call__(self, name: str, state: BreakerState) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get((name, state))
            if last is not None and now - last < self.interval_s:
                self.suppressed += 1
                return
            self._last[(name, state)] = now
        self._emit(name, state)
