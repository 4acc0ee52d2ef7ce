"""From children to mergeable state: deltas for the shared store, windows, samples.

Each process turns its children into :class:`SeriesState` values, keeps the
last totals it pushed, and sends only the difference (a :class:`PushBatch`)
to the shared store, where deltas are added. Counter deltas also land in a
time bucket of :data:`WINDOW_BUCKET_S` seconds, from which sliding-window
rates are computed. Reading merges states and renders :class:`MetricSample`.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from ._buckets import BucketLayout, parse_buckets, quantiles
from ._metrics import Counter, Family, Gauge, Histogram
from ._model import (
    MAX_WINDOW_S,
    REPORTED_QUANTILES,
    WINDOW_BUCKET_S,
    AggregationRule,
    MetricSample,
    SeriesState,
    series_id,
    window_label,
)


class Rules:
    """Aggregation rules by metric-name prefix; the longest matching prefix wins."""

    def __init__(self, default: AggregationRule | None = None) -> None:
        self._lock = threading.Lock()
        self._default = default or AggregationRule()
        self._by_prefix: dict[str, AggregationRule] = {}

    def set(self, prefix: str, rule: AggregationRule) -> None:
        with self._lock:
            if prefix == "":
                self._default = rule
            else:
                self._by_prefix[prefix] = rule

    def for_name(self, name: str) -> AggregationRule:
        with self._lock:
            best = ""
            for prefix in self._by_prefix:
                if name.startswith(prefix) and len(prefix) > len(best):
                    best = prefix
            return self._by_prefix[best] if best else self._default

    def as_dict(self) -> dict[str, AggregationRule]:
        with self._lock:
            return {"": self._default, **self._by_prefix}


@lru_cache(maxsize=256)
def layout_of(spec: str) -> BucketLayout:
    """The layout named by ``spec`` (cached)."""
    return parse_buckets(spec)


def window_start(now: float) -> int:
    """Start of the window bucket holding ``now``."""
    return int(now // WINDOW_BUCKET_S) * WINDOW_BUCKET_S


def collect(families: Iterable[Family]) -> dict[str, SeriesState]:
    """This process's cumulative state, by series id."""
    out: dict[str, SeriesState] = {}
    for family in families:
        for child in family.all_children():
            sid = series_id(child.name, child.labels)
            state = SeriesState(family.kind, child.name, child.labels)
            if isinstance(child, Counter):
                state.value = child.value
            elif isinstance(child, Gauge):
                state.gauge_values = [child.value]
            elif isinstance(child, Histogram):
                for layout, counts, total in list(child.retired):
                    state.add_hist(layout.spec, counts, total)
                layout, counts, total = child.read()
                state.add_hist(layout.spec, counts, total)
            out[sid] = state
    return out


@dataclass
class PushBatch:
    """Increments of one process since its previous push (exactly once per ``seq``)."""

    proc: str
    seq: int
    time: float
    window_start: int
    #: Series id -> ``{"k": kind, "n": name, "l": labels}`` JSON, for series not sent before.
    meta: dict[str, str] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    #: Series id -> layout spec -> (bucket count deltas, sum delta).
    hist: dict[str, dict[str, tuple[dict[int, int], float]]] = field(default_factory=dict)
    #: Every gauge of the process (current values, not deltas).
    gauges: dict[str, float] = field(default_factory=dict)
    #: The process is shutting down: its gauges are removed after this batch.
    final: bool = False

    def is_empty(self) -> bool:
        return not (self.meta or self.counters or self.hist or self.gauges or self.final)


def _num(x: float) -> str:
    # Numbers travel as text: Lua would round them to 14 digits.
    return str(x) if isinstance(x, int) else repr(float(x))


def batch_payload(batch: PushBatch) -> str:
    """The JSON the stores apply (numbers as strings, so nothing is rounded on the way)."""
    hist: dict[str, str] = {}
    for sid, parts in batch.hist.items():
        for spec, (counts, total) in parts.items():
            for idx, c in counts.items():
                hist[f"{sid}|{spec}|{idx}"] = str(c)
            hist[f"{sid}|{spec}|sum"] = _num(total)
    return json.dumps(
        {
            "meta": batch.meta,
            "counters": {k: _num(v) for k, v in batch.counters.items()},
            "hist": hist,
            "gauges": {k: _num(v) for k, v in batch.gauges.items()},
        },
        separators=(",", ":"),
    )


class DeltaTracker:
    """Remembers what was pushed and builds the next :class:`PushBatch`."""

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}
        self._hist: dict[tuple[str, str], tuple[dict[int, int], float]] = {}
        self._sent_meta: set[str] = set()

    def take(self, states: Mapping[str, SeriesState], proc: str, seq: int, now: float, final: bool) -> PushBatch:
        """The next batch; the tracker assumes it will be applied (the caller retries it until it is)."""
        batch = PushBatch(proc=proc, seq=seq, time=now, window_start=window_start(now), final=final)
        for sid, st in states.items():
            if sid not in self._sent_meta:
                batch.meta[sid] = json.dumps({"k": st.kind, "n": st.name, "l": [list(p) for p in st.labels]})
                self._sent_meta.add(sid)
            if st.kind == "counter":
                delta = st.value - self._counters.get(sid, 0)
                if delta:
                    batch.counters[sid] = delta
                    self._counters[sid] = st.value
            elif st.kind == "gauge":
                batch.gauges[sid] = st.gauge_values[0] if st.gauge_values else 0.0
            else:
                for spec, (counts, total) in st.hist.items():
                    old_counts, old_total = self._hist.get((sid, spec), ({}, 0.0))
                    delta_counts = {i: c - old_counts.get(i, 0) for i, c in counts.items() if c != old_counts.get(i, 0)}
                    if delta_counts or total != old_total:
                        batch.hist.setdefault(sid, {})[spec] = (delta_counts, total - old_total)
                        self._hist[(sid, spec)] = (counts, total)
        return batch


class LocalWindows:
    """Counter deltas of this process in time buckets (for the local snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[int, dict[str, float]] = {}

    def add(self, start: int, deltas: Mapping[str, float]) -> None:
        with self._lock:
            bucket = self.buckets.setdefault(start, {})
            for sid, d in deltas.items():
                bucket[sid] = bucket.get(sid, 0.0) + d
            oldest = start - MAX_WINDOW_S - 2 * WINDOW_BUCKET_S
            for s in [s for s in self.buckets if s < oldest]:
                del self.buckets[s]

    def copy(self) -> dict[int, dict[str, float]]:
        with self._lock:
            return {s: dict(b) for s, b in self.buckets.items()}


def rates(
    sid: str, windows_s: Iterable[int], buckets: Mapping[int, Mapping[str, float]], now: float
) -> dict[str, float]:
    """Per-second rates of one counter over each window, from complete buckets only."""
    current = window_start(now)
    out: dict[str, float] = {}
    for w in windows_s:
        total = sum(b.get(sid, 0.0) for s, b in buckets.items() if current - w <= s < current)
        out[window_label(w)] = total / w
    return out


def render(
    states: Mapping[str, SeriesState],
    windows: Mapping[int, Mapping[str, float]],
    rules: Rules,
    now: float,
    prefix: str | None = None,
) -> list[MetricSample]:
    """Samples for every series whose name starts with ``prefix``, sorted by name and labels."""
    samples: list[MetricSample] = []
    for sid, st in states.items():
        if prefix and not st.name.startswith(prefix):
            continue
        rule = rules.for_name(st.name)
        if st.kind == "counter":
            r = rates(sid, rule.windows_s, windows, now)
            samples.append(MetricSample(st.name, "counter", st.labels, value=st.value, rates=r))
        elif st.kind == "gauge":
            vals = st.gauge_values or [0.0]
            merged = sum(vals) if rule.gauge_merge == "sum" else (max(vals) if rule.gauge_merge == "max" else min(vals))
            samples.append(MetricSample(st.name, "gauge", st.labels, value=merged))
        else:
            samples.append(_hist_sample(st))
    samples.sort(key=lambda s: (s.name, s.labels))
    return samples


def _hist_sample(st: SeriesState) -> MetricSample:
    parts = [(layout_of(spec), counts) for spec, (counts, _) in st.hist.items()]
    rows: list[tuple[float, float, int]] = []
    for layout, counts in parts:
        for idx, c in counts.items():
            if c:
                lower, upper = layout.bounds(idx)
                rows.append((lower, upper, c))
    rows.sort(key=lambda r: (r[1], r[0]))
    qs = quantiles(parts, REPORTED_QUANTILES)
    errors = [layout.relative_error for layout, _ in parts]
    rel = max(e for e in errors if e is not None) if errors and all(e is not None for e in errors) else None
    return MetricSample(
        st.name,
        "histogram",
        st.labels,
        count=sum(r[2] for r in rows),
        sum=math.fsum(s for _, s in st.hist.values()),
        buckets=tuple(rows),
        quantiles={f"p{round(q * 100):d}": v for q, v in qs.items()},
        layouts=tuple(sorted(st.hist)),
        relative_error=rel,
    )


def merge_into(target: dict[str, SeriesState], sid: str, st: SeriesState) -> None:
    """Add ``st`` to ``target[sid]`` (counters and histograms add; gauges collect one value per process)."""
    mine = target.get(sid)
    if mine is None:
        target[sid] = SeriesState(st.kind, st.name, st.labels, st.value, list(st.gauge_values), {})
        for spec, (counts, total) in st.hist.items():
            target[sid].add_hist(spec, counts, total)
        return
    mine.value += st.value
    mine.gauge_values.extend(st.gauge_values)
    for spec, (counts, total) in st.hist.items():
        mine.add_hist(spec, counts, total)
