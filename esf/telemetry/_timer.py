"""``Telemetry.timer``: seconds into a histogram, as a context manager or a decorator."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from ._metrics import Histogram

P = ParamSpec("P")
R = TypeVar("R")

_perf = time.perf_counter


class Timer:
    """Observe elapsed seconds into a histogram.

    As a context manager (``with tel.timer("x"):``) it times the block, even
    when the block raises; as a decorator (``@tel.timer("x")``) it times each
    call. A decorated function may be called from many threads at once; one
    ``Timer`` object used as a context manager should stay in one thread.
    """

    __slots__ = ("_starts", "histogram")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._starts: list[float] = []

    def __enter__(self) -> Timer:
        self._starts.append(_perf())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.histogram.observe(max(0.0, _perf() - self._starts.pop()))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        histogram = self.histogram

        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start = _perf()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(max(0.0, _perf() - start))

        return timed
