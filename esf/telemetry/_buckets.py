"""Mergeable histogram bucket layouts and quantiles over bucket counts.

Two layouts, both identified by a ``spec`` string that travels with the data
so that processes only ever add counts of identical buckets:

* :class:`ExponentialBuckets` (``"exp:8"``, the default): bucket ``i`` holds
  ``(g**(i-1), g**i]`` with ``g = 2**(1/k)``; a quantile is reported as the
  bucket's midpoint in relative terms, ``2g**i/(g+1)``, whose relative error
  is at most ``(g-1)/(g+1)`` (≈ 4.3 % for ``k = 8``). Values at or below
  :data:`MIN_TRACKED_VALUE` count in a zero bucket reported as 0. This is the
  DDSketch mapping with a fixed g, so merges are exact bucket additions.
* :class:`ExplicitBuckets` (``"explicit:0.005,0.01,…"``): Prometheus-style
  upper bounds; quantiles are interpolated linearly inside a bucket, so the
  error is at most the width of the bucket that holds the quantile. Values
  above the last bound go to ``+Inf``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ValidationError

#: Values at or below this go to the zero bucket of an exponential layout.
MIN_TRACKED_VALUE = 1e-9
#: Index of the zero bucket (exponential layouts).
ZERO_INDEX = -(2**31)
#: Default buckets per doubling: g = 2**(1/8), relative error ≤ 4.3 %.
DEFAULT_BUCKETS_PER_DOUBLING = 8


class BucketLayout(Protocol):
    """How values map to integer bucket indexes; equal ``spec`` means mergeable."""

    @property
    def spec(self) -> str:
        """Identifies the layout; data with equal specs merge by adding counts."""

    def index(self, value: float) -> int:
        """The bucket index of a non-negative ``value``."""

    def bounds(self, index: int) -> tuple[float, float]:
        """``(lower, upper]`` of a bucket (``upper`` may be ``inf``)."""

    def estimate(self, index: int, fraction: float) -> float:
        """A value inside bucket ``index`` for a rank ``fraction`` (0..1) of the way through it."""

    @property
    def relative_error(self) -> float | None:
        """The documented bound on a quantile's relative error, when there is one."""


@dataclass(frozen=True)
class ExponentialBuckets:
    """Log-linear buckets: ``per_doubling`` buckets between each power of two.

    Parameters
    ----------
    per_doubling:
        Buckets per doubling (1..64); more buckets, smaller error, more memory.
    """

    per_doubling: int = DEFAULT_BUCKETS_PER_DOUBLING

    def __post_init__(self) -> None:
        if isinstance(self.per_doubling, bool) or not isinstance(self.per_doubling, int):
            raise ValidationError("exponential buckets: per_doubling must be an integer")
        if not 1 <= self.per_doubling <= 64:
            raise ValidationError("exponential buckets: per_doubling must be between 1 and 64")
        object.__setattr__(self, "_gamma", 2.0 ** (1.0 / self.per_doubling))
        object.__setattr__(self, "_inv_log_gamma", self.per_doubling / math.log(2.0))

    @property
    def spec(self) -> str:
        return f"exp:{self.per_doubling}"

    @property
    def gamma(self) -> float:
        """The growth factor g between consecutive bucket bounds."""
        return float(self._gamma)  # type: ignore[attr-defined]

    @property
    def inv_log_gamma(self) -> float:
        """``1/ln g``: the hot path multiplies ``ln v`` by it."""
        return float(self._inv_log_gamma)  # type: ignore[attr-defined]

    @property
    def relative_error(self) -> float:
        g = self.gamma
        return (g - 1.0) / (g + 1.0)

    def index(self, value: float) -> int:
        if value <= MIN_TRACKED_VALUE:
            return ZERO_INDEX
        return math.ceil(math.log(value) * self.inv_log_gamma)

    def bounds(self, index: int) -> tuple[float, float]:
        if index == ZERO_INDEX:
            return (0.0, MIN_TRACKED_VALUE)
        k = self.per_doubling
        return (2.0 ** ((index - 1) / k), 2.0 ** (index / k))

    def estimate(self, index: int, fraction: float) -> float:
        if index == ZERO_INDEX:
            return 0.0
        return float(2.0 * 2.0 ** (index / self.per_doubling) / (self.gamma + 1.0))


@dataclass(frozen=True)
class ExplicitBuckets:
    """Fixed upper bounds, Prometheus style; the last bucket is ``+Inf``.

    Parameters
    ----------
    upper_bounds:
        Strictly increasing, finite, non-negative upper bounds.
    """

    upper_bounds: tuple[float, ...]

    def __post_init__(self) -> None:
        bounds = tuple(float(b) for b in self.upper_bounds)
        if not bounds:
            raise ValidationError("explicit buckets: give at least one upper bound")
        if any(not math.isfinite(b) or b < 0 for b in bounds):
            raise ValidationError("explicit buckets: bounds must be finite and non-negative (+Inf is implicit)")
        if any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValidationError("explicit buckets: bounds must be strictly increasing")
        object.__setattr__(self, "upper_bounds", bounds)

    @property
    def spec(self) -> str:
        return "explicit:" + ",".join(repr(b) for b in self.upper_bounds)

    @property
    def relative_error(self) -> float | None:
        return None

    def index(self, value: float) -> int:
        # First bound >= value (so value <= bound, Prometheus's "le"); len(bounds) is +Inf.
        return bisect.bisect_left(self.upper_bounds, value)

    def bounds(self, index: int) -> tuple[float, float]:
        ub = self.upper_bounds
        lower = 0.0 if index == 0 else ub[index - 1]
        upper = ub[index] if index < len(ub) else math.inf
        return (lower, upper)

    def estimate(self, index: int, fraction: float) -> float:
        lower, upper = self.bounds(index)
        if math.isinf(upper):
            return lower
        return lower + (upper - lower) * fraction


def parse_buckets(value: object) -> BucketLayout:
    """A layout from a spec string (``"exp:8"``, ``"explicit:0.1,1,10"``), a list of bounds or a layout.

    Raises
    ------
    ValidationError
        When ``value`` describes no valid layout.
    """
    if isinstance(value, ExponentialBuckets | ExplicitBuckets):
        return value
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if kind == "exp":
            try:
                return ExponentialBuckets(int(rest or DEFAULT_BUCKETS_PER_DOUBLING))
            except ValueError:
                raise ValidationError(f"buckets {value!r}: 'exp:' takes an integer (example: 'exp:8')") from None
        if kind == "explicit":
            try:
                return ExplicitBuckets(tuple(float(x) for x in rest.split(",") if x.strip()))
            except ValueError:
                raise ValidationError(
                    f"buckets {value!r}: 'explicit:' takes numbers (example: 'explicit:0.1,1')"
                ) from None
        raise ValidationError(f"buckets {value!r}: expected 'exp:N', 'explicit:B1,B2,…' or a list of upper bounds")
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        try:
            return ExplicitBuckets(tuple(float(x) for x in value))
        except (TypeError, ValueError):
            raise ValidationError(f"buckets {value!r}: a list of upper bounds must hold numbers") from None
    raise ValidationError(f"buckets {value!r}: expected 'exp:N', 'explicit:B1,B2,…' or a list of upper bounds")


def quantiles(
    parts: Iterable[tuple[BucketLayout, Mapping[int, int]]], qs: Sequence[float]
) -> dict[float, float | None]:
    """Quantiles over bucket counts, possibly from several layouts.

    With one layout the result is within that layout's error. Parts with
    different layouts (during a bucket change) are merged by sorting buckets
    by upper bound, which keeps the error within the coarser layout's.

    Parameters
    ----------
    parts:
        ``(layout, {index: count})`` pairs.
    qs:
        Quantiles in ``[0, 1]``.

    Returns
    -------
    dict
        ``{q: value}``; ``None`` for every ``q`` when there are no samples.
        The rank of quantile ``q`` over ``n`` samples is ``floor(q*(n-1))``
        (0-based), like ``numpy.quantile(method="lower")``.
    """
    buckets: list[tuple[float, float, BucketLayout, int, int]] = []
    for layout, counts in parts:
        for idx, count in counts.items():
            if count > 0:
                lower, upper = layout.bounds(idx)
                buckets.append((upper, lower, layout, idx, count))
    buckets.sort(key=lambda b: (b[0], b[1]))
    total = sum(b[4] for b in buckets)
    out: dict[float, float | None] = {}
    for q in qs:
        if total == 0:
            out[q] = None
            continue
        rank = math.floor(min(max(q, 0.0), 1.0) * (total - 1))
        seen = 0
        for _upper, _lower, layout, idx, count in buckets:
            if seen + count > rank:
                fraction = (rank - seen + 0.5) / count
                out[q] = layout.estimate(idx, fraction)
                break
            seen += count
    return out
