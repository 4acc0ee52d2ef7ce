"""Per-process state of the cache: namespaces and their counters, pending invalidations, value freezing."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..events import FrozenDict, FrozenList
from ._types import Codec, Invalidation, NamespaceStats

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["COUNTERS", "CounterExport", "NsState", "PendingInvalidations", "check_seconds", "freeze"]

log = logging.getLogger("esf.cache")

#: The counters of each namespace (exported as ``esf.cache.<name>``; the two hit counters as ``esf.cache.hits``).
COUNTERS = ("local_hits", "shared_hits", "misses", "loads", "load_errors", "stampede_waits", "degraded",
            "stale_served", "refreshes")


class NsState:
    """One namespace in this process: its codec, default TTL, last seen version and counters."""

    __slots__ = ("codec", "load_seconds", "name", "ttl_s", "version", "version_until", *COUNTERS)

    def __init__(self, name: str, codec: Codec, ttl_s: float) -> None:
        self.name = name
        self.codec = codec
        self.ttl_s = ttl_s
        #: The namespace's version as last seen, trusted until ``version_until`` (monotonic seconds).
        self.version: int | None = None
        self.version_until = 0.0
        self.load_seconds = 0.0
        self.local_hits = 0
        self.shared_hits = 0
        self.misses = 0
        self.loads = 0
        self.load_errors = 0
        self.stampede_waits = 0
        self.degraded = 0
        self.stale_served = 0
        self.refreshes = 0

    def stats(self) -> NamespaceStats:
        return NamespaceStats(version=self.version, load_seconds=self.load_seconds,
                              **{c: getattr(self, c) for c in COUNTERS})


class PendingInvalidations:
    """Invalidations made while the shared tier is down, oldest first, to be replayed when it is back.

    None is dropped: a pending bump of a namespace makes its other invalidations redundant, and when
    ``limit`` is reached, one bump of the namespace replaces all of that namespace's (coarser, but
    nothing stale survives).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Invalidation] = deque()
        self._bumps: set[str] = set()
        self._lock = threading.Lock()
        #: Times the list was full and a namespace's invalidations were folded into a bump.
        self.collapsed = 0

    def add(self, message: Invalidation, origin: str) -> None:
        with self._lock:
            if message.namespace in self._bumps:
                return
            if message.op == "delete" and len(self._items) < self.limit:
                self._items.append(message)
                return
            self._items = deque(m for m in self._items if m.namespace != message.namespace)
            self._items.append(Invalidation("bump", message.namespace, origin))
            self._bumps.add(message.namespace)
            if message.op == "delete":
                self.collapsed += 1

    def first(self) -> Invalidation | None:
        with self._lock:
            return self._items[0] if self._items else None

    def done(self, message: Invalidation) -> None:
        """``message`` (the first) was replayed."""
        with self._lock:
            if self._items and self._items[0] is message:
                self._items.popleft()
                if message.op == "bump":
                    self._bumps.discard(message.namespace)

    def __len__(self) -> int:
        return len(self._items)

    def reset_lock(self) -> None:
        self._lock = threading.Lock()


class CounterExport:
    """Adds the increments of the namespaces' counters since the last export to telemetry counters."""

    def __init__(self, telemetry: Callable[[], Telemetry] | None) -> None:
        self._telemetry = telemetry
        self._exported: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def export(self, namespaces: Iterable[NsState], evictions: int) -> None:
        """Never raises (telemetry never fails the cache)."""
        if self._telemetry is None:
            return
        with self._lock:
            try:
                telemetry = self._telemetry()
                for ns in namespaces:
                    for field in COUNTERS:
                        name, labels = _metric(field, ns.name)
                        self._add(telemetry, (ns.name, field), float(getattr(ns, field)), name, labels)
                self._add(telemetry, ("", "evictions"), float(evictions), "esf.cache.evictions", None)
            except Exception:
                log.debug("cache: could not export counters", exc_info=True)

    def _add(self, telemetry: Telemetry, mark: tuple[str, str], value: float, name: str,
             labels: dict[str, str] | None) -> None:
        last = self._exported.get(mark, 0.0)
        if value > last:
            self._exported[mark] = value
            telemetry.counter(name, labels).inc(value - last)

    def reset_lock(self) -> None:
        self._lock = threading.Lock()


def _metric(field: str, namespace: str) -> tuple[str, dict[str, str]]:
    labels = {"namespace": namespace}
    if field in ("local_hits", "shared_hits"):
        return "esf.cache.hits", {**labels, "tier": field.split("_")[0]}
    return f"esf.cache.{field}", labels


def check_seconds(name: str, value: object) -> float:
    """``value`` as seconds.

    Raises:
        ValidationError: not a number greater than zero.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValidationError(f"cache {name}: must be a finite number of seconds greater than zero, got {value!r}")
    return float(value)


def freeze(value: Any) -> Any:
    """``value`` with its containers made read-only (a cached value is shared by every caller)."""
    kind = type(value)
    if kind is dict:
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if kind is list or kind is tuple:
        return FrozenList(freeze(v) for v in value)
    return value
