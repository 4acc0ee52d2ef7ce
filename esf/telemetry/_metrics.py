"""Metric children (the hot path) and families (label sets, cardinality cap).

A child is one series: a metric name plus one label set, resolved once by
``Telemetry.counter(...)`` and friends. Its methods do one range check and
one increment under a per-child lock, nothing else (a counter's
``incrementer()`` is lighter still: one atomic ``itertools.count`` step, read
exactly when the counter is read); everything else
(merging, windows, pushing, exporting) reads children from a background
thread.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any, Literal

from ..errors import ValidationError
from ._buckets import MIN_TRACKED_VALUE, ZERO_INDEX, BucketLayout, ExplicitBuckets, ExponentialBuckets
from ._names import OVERFLOW_LABEL_VALUE, LabelTuple

Kind = Literal["counter", "gauge", "histogram"]

_INF = math.inf
_log = math.log
_ceil = math.ceil


def _bad_value(kind: str, name: str, value: object, rule: str) -> ValidationError:
    return ValidationError(f"{kind} {name!r}: {value!r} refused ({rule})", errors={"value": rule})


class Counter:
    """A monotonically increasing count (one series)."""

    __slots__ = ("_lock", "_tallies", "_value", "labels", "name")

    def __init__(self, name: str, labels: LabelTuple) -> None:
        self.name = name
        self.labels = labels
        self._lock = threading.Lock()
        self._value: float = 0
        #: ``[itertools.count, numbers it gave that were not increments]`` of each :meth:`incrementer`.
        self._tallies: list[list[Any]] = []

    def incrementer(self) -> Callable[[], object]:
        """A function that adds 1, for the hottest paths (flag evaluations): one call of an
        ``itertools.count``'s ``__next__``, atomic under the GIL, with no lock and no range check.
        The counter's :attr:`value` includes every call, exactly."""
        tally = itertools.count()
        with self._lock:
            self._tallies.append([tally, 0])
        return tally.__next__

    def _read_tallies(self) -> float:
        # Under self._lock. next() gives (increments + numbers taken before); this read takes one more.
        total = 0
        for t in self._tallies:
            total += next(t[0]) - t[1]
            t[1] += 1
        return total

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (default 1).

        Raises
        ------
        ValidationError
            When ``n`` is negative, NaN, infinite or not a number.
        """
        try:
            if not 0 <= n < _INF:
                raise _bad_value("counter", self.name, n, "increments must be finite and not negative")
        except TypeError:
            raise _bad_value("counter", self.name, n, "increments must be numbers") from None
        with self._lock:
            self._value += n

    @property
    def value(self) -> float:
        """The count in this process."""
        if not self._tallies:
            return self._value
        with self._lock:
            return self._value + self._read_tallies()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        for t in self._tallies:  # the incrementers handed out stay valid; they count from zero again
            t[1] = next(t[0]) + 1


class Gauge:
    """A value that goes up and down (one series)."""

    __slots__ = ("_lock", "_value", "labels", "name")

    def __init__(self, name: str, labels: LabelTuple) -> None:
        self.name = name
        self.labels = labels
        self._lock = threading.Lock()
        self._value: float = 0

    def set(self, value: float) -> None:
        """Set the gauge to ``value``.

        Raises
        ------
        ValidationError
            When ``value`` is NaN, infinite or not a number.
        """
        try:
            if not -_INF < value < _INF:
                raise _bad_value("gauge", self.name, value, "values must be finite")
        except TypeError:
            raise _bad_value("gauge", self.name, value, "values must be numbers") from None
        self._value = value

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (may be negative). Raises ValidationError for NaN, infinities and non-numbers."""
        try:
            if not -_INF < n < _INF:
                raise _bad_value("gauge", self.name, n, "increments must be finite")
        except TypeError:
            raise _bad_value("gauge", self.name, n, "increments must be numbers") from None
        with self._lock:
            self._value += n

    def dec(self, n: float = 1) -> None:
        """Subtract ``n``. Raises ValidationError for NaN, infinities and non-numbers."""
        self.inc(-n if isinstance(n, int | float) else n)

    @property
    def value(self) -> float:
        """The value in this process."""
        return self._value

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._value = 0


class Histogram:
    """A distribution of non-negative observations in mergeable buckets (one series)."""

    __slots__ = ("_counts", "_index", "_k", "_lock", "_sum", "labels", "layout", "name", "retired")

    def __init__(self, name: str, labels: LabelTuple, layout: BucketLayout) -> None:
        self.name = name
        self.labels = labels
        self._lock = threading.Lock()
        #: ``(layout, counts, sum)`` parts recorded under earlier layouts (see ``_relayout``).
        self.retired: list[tuple[BucketLayout, dict[int, int], float]] = []
        self._set_layout(layout)

    def _set_layout(self, layout: BucketLayout) -> None:
        self.layout = layout
        self._counts: dict[int, int] = {}
        self._sum: float = 0.0
        # Exponential layouts are inlined in observe(); others call their index().
        self._k = layout.inv_log_gamma if isinstance(layout, ExponentialBuckets) else 0.0
        self._index: Callable[[float], int] = (
            functools.partial(bisect.bisect_left, layout.upper_bounds)
            if isinstance(layout, ExplicitBuckets)
            else layout.index
        )

    def observe(self, value: float) -> None:
        """Record one observation of ``value`` (seconds, bytes, …).

        Raises
        ------
        ValidationError
            When ``value`` is negative, NaN, infinite or not a number.
        """
        try:
            if not 0 <= value < _INF:
                raise _bad_value("histogram", self.name, value, "observations must be finite and not negative")
        except TypeError:
            raise _bad_value("histogram", self.name, value, "observations must be numbers") from None
        k = self._k
        if k:
            idx = _ceil(_log(value) * k) if value > MIN_TRACKED_VALUE else ZERO_INDEX
        else:
            idx = self._index(value)
        with self._lock:
            c = self._counts
            c[idx] = c.get(idx, 0) + 1
            self._sum += value

    def read(self) -> tuple[BucketLayout, dict[int, int], float]:
        """A consistent copy of ``(layout, counts, sum)`` for the current layout."""
        with self._lock:
            return self.layout, dict(self._counts), self._sum

    def _relayout(self, layout: BucketLayout) -> None:
        """Switch to ``layout``; what was recorded so far is kept in :attr:`retired`."""
        with self._lock:
            if layout.spec == self.layout.spec:
                return
            if self._counts:
                self.retired.append((self.layout, self._counts, self._sum))
            self._set_layout(layout)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self.retired = []
        self._counts = {}
        self._sum = 0.0


Child = Counter | Gauge | Histogram


class Family:
    """All series of one metric name: same kind, same label names, at most ``max_label_sets`` label sets."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        max_label_sets: int,
        on_overflow: Callable[[Family], None],
        layout: BucketLayout | None = None,
        pinned: bool = False,
    ) -> None:
        self.kind: Kind = kind
        self.name = name
        self.max_label_sets = max_label_sets
        #: Histogram bucket layout for new children; ``pinned`` when given explicitly by the caller.
        self.layout = layout
        self.pinned = pinned
        self._on_overflow = on_overflow
        self._lock = threading.Lock()
        self.label_names: tuple[str, ...] | None = None
        #: Label set (sorted pairs) -> child.
        self.children: dict[LabelTuple, Child] = {}
        #: Label items as the caller passed them -> child (avoids re-validating on every lookup).
        self.fast: dict[tuple[tuple[str, str], ...], Child] = {}

    def child(self, labels: LabelTuple) -> tuple[Child, bool]:
        """The child for validated ``labels``, and whether it is the overflow series.

        Raises
        ------
        ValidationError
            When the label names differ from the family's.
        """
        names = tuple(k for k, _ in labels)
        with self._lock:
            if self.label_names is None:
                self.label_names = names
            elif names != self.label_names:
                raise ValidationError(
                    f"metric {self.name!r} has labels {list(self.label_names)}; got {list(names)} "
                    "(every series of a metric has the same label names)",
                    errors={"labels": "label names differ"},
                )
            child = self.children.get(labels)
            if child is not None:
                return child, False
            if len(self.children) >= self.max_label_sets and names:
                overflow = tuple((k, OVERFLOW_LABEL_VALUE) for k in names)
                child = self.children.get(overflow)
                if child is None:
                    child = self._factory(overflow)
                    self.children[overflow] = child
                overflowed = True
            else:
                child = self._factory(labels)
                self.children[labels] = child
                overflowed = False
        if overflowed:
            self._on_overflow(self)
        return child, overflowed

    def _factory(self, labels: LabelTuple) -> Child:
        if self.kind == "counter":
            return Counter(self.name, labels)
        if self.kind == "gauge":
            return Gauge(self.name, labels)
        assert self.layout is not None
        return Histogram(self.name, labels, self.layout)

    def relayout(self, layout: BucketLayout) -> None:
        """Use ``layout`` for this histogram's series from now on (earlier counts are kept)."""
        with self._lock:
            self.layout = layout
            children = list(self.children.values())
        for child in children:
            if isinstance(child, Histogram):
                child._relayout(layout)

    def all_children(self) -> list[Child]:
        with self._lock:
            return list(self.children.values())

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.fast = {}
        for child in self.children.values():
            child._reset()
