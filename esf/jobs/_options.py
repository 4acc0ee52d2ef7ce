"""Job declaration options and their validation."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError

#: Job names: dotted identifiers, at most 200 characters.
JOB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|m|h)\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}

RateKey = Callable[[tuple[Any, ...], dict[str, Any]], str]


@dataclass(frozen=True)
class RateLimit:
    """A global token bucket: ``count`` jobs per ``per_s`` seconds, bursts up to ``burst``."""

    count: float
    per_s: float
    burst: int

    @property
    def rate_per_s(self) -> float:
        return self.count / self.per_s

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"10/s"``, ``"100/m"``, ``"5/10s"`` → RateLimit. Raises ValidationError."""
        m = _RATE_RE.match(text) if isinstance(text, str) else None
        if not m or float(m.group(1)) <= 0:
            raise ValidationError(f"rate_limit: {text!r} is not a rate such as '10/s', '100/m' or '5/10s'",
                                  errors={"rate_limit": "invalid"})
        count = float(m.group(1))
        per = float(m.group(2) or 1) * _PER[m.group(3)]
        return cls(count=count, per_s=per, burst=max(1, int(count)))


@dataclass(frozen=True)
class JobOptions:
    """Resolved options of one declared job (per-job values over the global defaults)."""

    name: str
    queue: str
    retries: int
    backoff_s: float
    max_backoff_s: float
    jitter: bool
    retry_on: tuple[type[BaseException], ...]
    timeout_s: float
    unique_for_s: float | None = None
    rate_limit: RateLimit | None = None
    rate_limit_key: str | RateKey | None = None
    priority: int | None = None
    #: Breakers of the downstreams this job calls: while one is open the job is deferred, not run.
    uses: tuple[str, ...] = ()

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, capped, optionally jittered)."""
        delay: float = min(self.max_backoff_s, self.backoff_s * (2 ** max(0, attempt - 1)))
        if self.jitter and delay > 0:
            delay = random.uniform(delay / 2, delay)
        return delay

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)

    def partition(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The rate-limit partition of a call ('' when not partitioned)."""
        key = self.rate_limit_key
        if key is None:
            return ""
        if callable(key):
            return str(key(args, kwargs))
        if key in kwargs:
            return str(kwargs[key])
        return ""


def validate_options(
    *,
    name: str,
    queue: str,
    queues: Sequence[str],
    retries: Any,
    backoff: Any,
    max_backoff: Any,
    timeout: Any,
    retry_on: Any,
    unique_for: Any,
    rate_limit: Any,
    priority: Any,
) -> None:
    """Raise one ValidationError listing every invalid option."""
    errors: dict[str, str] = {}
    if not isinstance(name, str) or len(name) > 200 or not JOB_NAME_RE.match(name):
        errors["name"] = f"{name!r} is not a job name (dotted identifiers, at most 200 characters)"
    if queue not in queues:
        errors["queue"] = f"{queue!r} is not a configured queue ({', '.join(queues)}); add it to jobs.queues"
    if not _is_int(retries) or retries < 0:
        errors["retries"] = f"must be an integer >= 0, got {retries!r}"
    for label, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if not _is_num(value) or value < 0:
            errors[label] = f"must be a number of seconds >= 0, got {value!r}"
    if not _is_num(timeout) or timeout <= 0:
        errors["timeout"] = f"must be a number of seconds > 0, got {timeout!r}"
    if unique_for is not None and (not _is_num(unique_for) or unique_for <= 0):
        errors["unique_for"] = f"must be a number of seconds > 0, got {unique_for!r}"
    if priority is not None and (not _is_int(priority) or not 0 <= priority <= 9):
        errors["priority"] = f"must be an integer from 0 to 9, got {priority!r}"
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        errors["retry_on"] = "must be an exception class or a tuple of exception classes"
    if rate_limit is not None and not isinstance(rate_limit, str):
        errors["rate_limit"] = f"must be a string such as '10/s', got {type(rate_limit).__name__}"
    if errors:
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise ValidationError(f"invalid job options for {name!r}: {detail}", errors=errors)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v
