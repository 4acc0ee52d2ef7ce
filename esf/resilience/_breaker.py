"""ESF's one circuit breaker: closed → open → half-open → closed.

* **closed**: calls go through; ``failure_threshold`` consecutive failures open it.
* **open**: calls fail fast with :class:`~esf.errors.CircuitOpen` until
  the reset timeout has passed, then the breaker is half-open.
* **half-open**: up to ``half_open_max_calls`` trial calls go through; a
  success closes the breaker, a failure opens it again for another timeout
  (doubled each time up to ``max_reset_timeout_s`` when that is set).

With a :class:`SharedState` (a Redis hash, see :mod:`esf.resilience._shared`)
the open and half-open states are the cluster's: one process opening the
breaker makes every process sharing it fail fast, and only one of them
probes once the timeout has passed. When the shared state cannot be read the
breaker falls back to this process's own view.

Every state change is reported to the listeners ``(name, state)``, which
Telemetry uses to keep the gauge ``esf.breaker.state{breaker=…}``
(0 closed, 1 open, 2 half-open, see :data:`STATE_VALUES`) and the
Foundation to record ``breaker.opened`` / ``breaker.closed`` events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, ParamSpec, Protocol, TypeVar

from ..errors import CircuitOpen, ValidationError

BreakerState = Literal["closed", "open", "half_open"]
#: Numeric value of each state, for the state gauge.
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "open": 1, "half_open": 2}

#: A shared state's answer: ``closed``, ``open`` (with the seconds left), ``probe`` (this caller
#: is the one trial call) or ``half_open`` (another process is probing).
Verdict = Literal["closed", "open", "probe", "half_open"]

P = ParamSpec("P")
T = TypeVar("T")
StateListener = Callable[[str, BreakerState], None]

log = logging.getLogger("esf.resilience")


class SharedState(Protocol):
    """Where breakers shared by several processes keep their open/half-open state."""

    def check(self, name: str, *, probe: bool, probe_ttl_s: float) -> tuple[Verdict, float]:
        """The verdict for one call (``probe``: take the trial slot when half-open) and the seconds left open."""
        ...

    def open(self, name: str, reset_timeout_s: float) -> None:
        """Open ``name`` for ``reset_timeout_s`` seconds (releases the trial slot)."""
        ...

    def close(self, name: str) -> None:
        """Close ``name`` (releases the trial slot)."""
        ...


class CircuitBreaker:
    """Fail fast after repeated failures; try again after a pause.

    Parameters
    ----------
    name:
        Shown in errors and metrics (``breaker`` label).
    failure_threshold:
        Consecutive failures that open the breaker (≥ 1).
    reset_timeout_s:
        Seconds the breaker stays open before allowing a trial call (> 0).
    half_open_max_calls:
        Trial calls allowed at once while half-open (≥ 1).
    max_reset_timeout_s:
        When set, each failed trial doubles the reset timeout up to this many seconds (a success
        brings it back to ``reset_timeout_s``).
    clock:
        Monotonic clock in seconds (tests may pass their own).
    on_state_change:
        Called with ``(name, new_state)`` after each change, outside the lock.
    shared:
        The cluster-wide state of this breaker (None: this process only).

    Raises
    ------
    ValidationError
        When a parameter is out of range.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        max_reset_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateListener | None = None,
        shared: SharedState | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValidationError("circuit breaker: failure_threshold must be at least 1")
        if not reset_timeout_s > 0:
            raise ValidationError("circuit breaker: reset_timeout_s must be greater than zero")
        if half_open_max_calls < 1:
            raise ValidationError("circuit breaker: half_open_max_calls must be at least 1")
        if max_reset_timeout_s is not None and max_reset_timeout_s < reset_timeout_s:
            raise ValidationError("circuit breaker: max_reset_timeout_s must not be below reset_timeout_s")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.max_reset_timeout_s = max_reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._listeners: list[StateListener] = [on_state_change] if on_state_change is not None else []
        self._shared = shared
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._timeout_s = reset_timeout_s
        self._trials = 0
        self._shared_left_s = 0.0
        #: Calls refused while open.
        self.rejected = 0

    def add_listener(self, listener: StateListener) -> None:
        """Also call ``listener(name, state)`` on each state change."""
        self._listeners.append(listener)

    @property
    def shared(self) -> bool:
        """Whether the open state is shared with other processes."""
        return self._shared is not None

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout has passed reads as half-open); takes no trial."""
        verdict = self._ask_shared(probe=False)
        with self._lock:
            changed = self._adopt(verdict) if verdict is not None else self._refresh()
            state = self._state
        self._notify(changed)
        return state

    def is_open(self) -> bool:
        """True while calls should not even be tried (open, its timeout not yet passed)."""
        return self.state == "open"

    def retry_after(self) -> float:
        """Seconds until the next trial call may go through (0 when closed or half-open)."""
        verdict = self._ask_shared(probe=False)
        with self._lock:
            if verdict is not None:
                changed = self._adopt(verdict)
                left = self._shared_left_s if self._state == "open" else 0.0
            else:
                changed = self._refresh()
                left = max(0.0, self._timeout_s - (self._clock() - self._opened_at)) if self._state == "open" else 0.0
        self._notify(changed)
        return left

    def _ask_shared(self, *, probe: bool) -> tuple[Verdict, float] | None:
        if self._shared is None:
            return None
        try:
            return self._shared.check(self.name, probe=probe, probe_ttl_s=self._timeout_s)
        except Exception as exc:  # the shared store is down: this process's own view decides
            log.debug("breaker %s: shared state unreadable (%s); using the local state", self.name,
                      type(exc).__name__)
            return None

    def _adopt(self, answer: tuple[Verdict, float]) -> BreakerState | None:
        """Take the shared verdict as this process's state; returns the new state when it changed."""
        verdict, left = answer
        state: BreakerState = "half_open" if verdict == "probe" else verdict
        self._shared_left_s = left
        if state == "open":
            self._opened_at = self._clock() - max(0.0, self._timeout_s - left)
        if state == self._state:
            return None
        self._state = state
        if state == "closed":
            self._failures = 0
        return state

    def _refresh(self) -> BreakerState | None:
        if self._state == "open" and self._clock() - self._opened_at >= self._timeout_s:
            self._state = "half_open"
            self._trials = 0
            return "half_open"
        return None

    def _notify(self, state: BreakerState | None) -> None:
        if state is None:
            return
        for listener in self._listeners:
            try:
                listener(self.name, state)
            except Exception:
                log.exception("breaker %s: a state listener failed", self.name)

    # -- calls -------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go through now (a half-open breaker counts the trial)."""
        verdict = self._ask_shared(probe=True)
        with self._lock:
            if verdict is not None:
                changed = self._adopt(verdict)
                ok = verdict[0] in ("closed", "probe")
                if not ok:
                    self.rejected += 1
            else:
                changed = self._refresh()
                if self._state == "closed":
                    ok = True
                elif self._state == "half_open" and self._trials < self.half_open_max_calls:
                    self._trials += 1
                    ok = True
                else:
                    self.rejected += 1
                    ok = False
        self._notify(changed)
        return ok

    def record_success(self) -> None:
        """A call succeeded: reset the failure count; a half-open breaker closes."""
        with self._lock:
            self._failures = 0
            self._timeout_s = self.reset_timeout_s
            changed: BreakerState | None = None
            if self._state != "closed":
                self._state = "closed"
                changed = "closed"
        if changed is not None and self._shared is not None:
            try:
                self._shared.close(self.name)
            except Exception as exc:
                log.debug("breaker %s: could not close the shared state (%s)", self.name, type(exc).__name__)
        self._notify(changed)

    def record_failure(self) -> None:
        """A call failed: a half-open breaker, or a closed one at the threshold, opens."""
        with self._lock:
            self._failures += 1
            changed: BreakerState | None = None
            if self._state == "half_open" or (self._state == "closed" and self._failures >= self.failure_threshold):
                if self._state == "half_open" and self.max_reset_timeout_s is not None:
                    self._timeout_s = min(self._timeout_s * 2, self.max_reset_timeout_s)
                self._state = "open"
                self._opened_at = self._clock()
                self._shared_left_s = self._timeout_s
                changed = "open"
            timeout = self._timeout_s
        if changed is not None and self._shared is not None:
            try:
                self._shared.open(self.name, timeout)
            except Exception as exc:
                log.debug("breaker %s: could not open the shared state (%s)", self.name, type(exc).__name__)
        self._notify(changed)

    def release(self) -> None:
        """A call ended without telling whether the dependency works (a bad argument, say): a half-open
        breaker gives its trial slot back, so the next call may try instead."""
        with self._lock:
            if self._state == "half_open" and self._trials > 0:
                self._trials -= 1

    def open_error(self) -> CircuitOpen:
        """The error a refused call raises."""
        return CircuitOpen(
            f"circuit breaker {self.name!r} is open after {self.failure_threshold} consecutive failures; "
            f"retrying in at most {self._timeout_s:g} s",
            breaker=self.name,
        )

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` through the breaker.

        Raises
        ------
        CircuitOpen
            When the breaker is open (``fn`` is not called).
        Exception
            Whatever ``fn`` raises (counted as a failure).

        Returns
        -------
        Whatever ``fn`` returns.
        """
        if not self.allow():
            raise self.open_error()
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result

    def snapshot(self) -> dict[str, object]:
        """``{"state", "failures", "rejected", "shared", "retry_after_s"}`` for health reports."""
        left = self.retry_after()
        return {"state": self._state, "failures": self._failures, "rejected": self.rejected,
                "shared": self.shared, "retry_after_s": round(left, 3)}


def dependency_breaker(name: str, *, failure_threshold: int = 3) -> CircuitBreaker:
    """The breaker of one of ESF's own dependencies in this process (the event store's database, the
    coordination Redis, the broker for producers): opens after ``failure_threshold`` (3) consecutive failures
    for 1 s, doubling up to 30 s while trials fail."""
    return CircuitBreaker(name, failure_threshold=failure_threshold, reset_timeout_s=1.0, max_reset_timeout_s=30.0)
