"""Value types shared by the aggregation, the stores and the exporters."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ValidationError
from ._buckets import BucketLayout, ExponentialBuckets, parse_buckets
from ._metrics import Kind
from ._names import LabelTuple

#: Width of one time bucket of the sliding windows (seconds).
WINDOW_BUCKET_S = 5
#: Longest sliding window that may be configured (seconds); window buckets are kept this long.
MAX_WINDOW_S = 3600
#: Default sliding windows of counter rates (seconds): last 1 and 5 minutes.
DEFAULT_WINDOWS_S: tuple[int, ...] = (60, 300)
#: Quantiles reported for every histogram.
REPORTED_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)

GaugeMerge = Literal["sum", "max", "min"]


def series_id(name: str, labels: LabelTuple) -> str:
    """A short stable id of one series, used as a key in the shared stores."""
    raw = json.dumps([name, [list(p) for p in labels]], separators=(",", ":"))
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def window_label(seconds: int) -> str:
    """``60`` → ``"1m"``, ``300`` → ``"5m"``, ``90`` → ``"90s"``, ``3600`` → ``"1h"``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


@dataclass(frozen=True)
class AggregationRule:
    """How metrics under one name prefix are aggregated.

    Parameters
    ----------
    buckets:
        Histogram bucket layout (default ``exp:8``, relative error ≤ 4.3 %).
    windows_s:
        Sliding windows for counter rates, seconds, multiples of
        :data:`WINDOW_BUCKET_S`, at most :data:`MAX_WINDOW_S`.
    gauge_merge:
        How the gauges of several processes combine: ``sum``, ``max`` or ``min``.
    """

    buckets: BucketLayout = field(default_factory=ExponentialBuckets)
    windows_s: tuple[int, ...] = DEFAULT_WINDOWS_S
    gauge_merge: GaugeMerge = "sum"


def parse_rule(spec: Mapping[str, Any], base: AggregationRule) -> AggregationRule:
    """A rule from a mapping ``{"buckets": …, "windows": […], "gauge_merge": …}`` over ``base``.

    Raises
    ------
    ValidationError
        When a key is unknown or a value is invalid.
    """
    unknown = set(spec) - {"buckets", "windows", "gauge_merge"}
    if unknown:
        raise ValidationError(f"aggregation: unknown key(s) {sorted(unknown)}; use buckets, windows, gauge_merge")
    buckets = parse_buckets(spec["buckets"]) if spec.get("buckets") is not None else base.buckets
    windows = base.windows_s
    if spec.get("windows") is not None:
        windows = tuple(_parse_window(w) for w in spec["windows"])
    merge = spec.get("gauge_merge", base.gauge_merge)
    if merge not in ("sum", "max", "min"):
        raise ValidationError(f"aggregation: gauge_merge {merge!r} is not one of sum, max, min")
    return AggregationRule(buckets=buckets, windows_s=windows, gauge_merge=merge)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def _parse_window(value: object) -> int:
    seconds: float
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValidationError(f"aggregation: window {value!r} is not a duration (examples: 60, '1m', '5m')")
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(f"aggregation: window {value!r} is not a duration (examples: 60, '1m', '5m')")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_WINDOW_S or seconds % WINDOW_BUCKET_S:
        raise ValidationError(
            f"aggregation: window {value!r} must be a multiple of {WINDOW_BUCKET_S} s, at most {MAX_WINDOW_S} s"
        )
    return int(seconds)


@dataclass
class SeriesState:
    """The merged cumulative state of one series (one process or a whole cluster)."""

    kind: Kind
    name: str
    labels: LabelTuple
    #: Counter total.
    value: float = 0.0
    #: Gauge values, one per live process.
    gauge_values: list[float] = field(default_factory=list)
    #: Histogram parts by layout spec: ``spec -> (counts by bucket index, sum)``.
    hist: dict[str, tuple[dict[int, int], float]] = field(default_factory=dict)

    def add_hist(self, spec: str, counts: Mapping[int, int], total: float) -> None:
        mine, s = self.hist.get(spec, ({}, 0.0))
        for idx, c in counts.items():
            mine[idx] = mine.get(idx, 0) + c
        self.hist[spec] = (mine, s + total)


@dataclass(frozen=True)
class MetricSample:
    """One series as exporters and ``snapshot()`` see it.

    ``value`` is the counter total or the merged gauge; histograms carry
    ``count``, ``sum``, ``buckets`` (``(lower, upper, count)`` sorted by upper
    bound, not cumulative) and ``quantiles`` (``{"p50": …}``). ``rates`` are
    per-second counter rates over the sliding windows (``{"1m": …}``).
    """

    name: str
    kind: Kind
    labels: LabelTuple
    value: float | None = None
    count: int = 0
    sum: float = 0.0
    buckets: tuple[tuple[float, float, int], ...] = ()
    quantiles: Mapping[str, float | None] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    layouts: tuple[str, ...] = ()
    relative_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (used by ``snapshot()`` and ``esf metrics --json``)."""
        out: dict[str, Any] = {"labels": dict(self.labels)}
        if self.kind == "histogram":
            out.update(
                count=self.count,
                sum=self.sum,
                **dict(self.quantiles),
                buckets=[[upper if math.isfinite(upper) else "+Inf", c] for _, upper, c in self.buckets],
                layouts=list(self.layouts),
                relative_error=self.relative_error,
            )
        else:
            out["value"] = self.value
        if self.rates:
            out["rates"] = dict(self.rates)
        return out


@dataclass(frozen=True)
class MetricBatch:
    """What an exporter receives: every series at one moment.

    ``scope`` is ``"cluster"`` (merged over every process that pushes to the
    shared store) or ``"local"`` (this process only). Values are cumulative.
    """

    scope: Literal["local", "cluster"]
    time: float
    samples: tuple[MetricSample, ...]
    processes: int = 1
