"""A small thread-safe circuit breaker: closed → open → half-open → closed.

* **closed**: calls go through; ``failure_threshold`` consecutive failures open it.
* **open**: calls fail fast with :class:`~esf.errors.CircuitOpen` until
  ``reset_timeout_s`` has passed, then the breaker is half-open.
* **half-open**: up to ``half_open_max_calls`` trial calls go through; a
  success closes the breaker, a failure opens it again for another timeout.

Every state change is reported to ``on_state_change(name, state)``, which
Telemetry uses to keep the gauge ``esf.breaker.state{breaker=…}``
(0 closed, 1 open, 2 half-open, see :data:`STATE_VALUES`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, ParamSpec, TypeVar

from ..errors import CircuitOpen, ValidationError

BreakerState = Literal["closed", "open", "half_open"]
#: Numeric value of each state, for the state gauge.
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "open": 1, "half_open": 2}

P = ParamSpec("P")
T = TypeVar("T")
StateListener = Callable[[str, BreakerState], None]


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
    clock:
        Monotonic clock in seconds (tests may pass their own).
    on_state_change:
        Called with ``(name, new_state)`` after each change, outside the lock.

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
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValidationError("circuit breaker: failure_threshold must be at least 1")
        if not reset_timeout_s > 0:
            raise ValidationError("circuit breaker: reset_timeout_s must be greater than zero")
        if half_open_max_calls < 1:
            raise ValidationError("circuit breaker: half_open_max_calls must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._listener = on_state_change
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        #: Calls refused while open.
        self.rejected = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout has passed reads as half-open)."""
        with self._lock:
            changed = self._refresh()
            state = self._state
        self._notify(changed)
        return state

    def _refresh(self) -> BreakerState | None:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._state = "half_open"
            self._trials = 0
            return "half_open"
        return None

    def _notify(self, state: BreakerState | None) -> None:
        if state is not None and self._listener is not None:
            self._listener(self.name, state)

    def allow(self) -> bool:
        """Whether a call may go through now (a half-open breaker counts the trial)."""
        with self._lock:
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
            changed: BreakerState | None = None
            if self._state != "closed":
                self._state = "closed"
                changed = "closed"
        self._notify(changed)

    def record_failure(self) -> None:
        """A call failed: a half-open breaker, or a closed one at the threshold, opens."""
        with self._lock:
            self._failures += 1
            changed: BreakerState | None = None
            if self._state == "half_open" or (self._state == "closed" and self._failures >= self.failure_threshold):
                self._state = "open"
                self._opened_at = self._clock()
                changed = "open"
        self._notify(changed)

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
            raise CircuitOpen(
                f"circuit breaker {self.name!r} is open after {self.failure_threshold} consecutive failures; "
                f"retrying in at most {self.reset_timeout_s:g} s"
            )
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result
