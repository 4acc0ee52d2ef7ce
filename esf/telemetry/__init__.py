"""Telemetry: metrics that add up across processes, events, exporters.

    tel = create_telemetry(settings)            # fnd.telemetry
    charges = tel.counter("billing.charges", {"currency": "eur"})
    charges.inc()
    with tel.timer("billing.charge_seconds"):
        ...
    tel.snapshot()                               # merged over every process

See docs/telemetry.md for the guarantees and limits.
"""

from __future__ import annotations

from ._buckets import BucketLayout, ExplicitBuckets, ExponentialBuckets, parse_buckets
from ._events import EventHandler
from ._exporting import Exporter, discover_exporters
from ._factory import create_store, create_telemetry, exporter_defaults, exporter_options
from ._instruments import DEFAULT_RULES, Instruments, TelemetryHooks
from ._metrics import Counter, Gauge, Histogram
from ._model import AggregationRule, MetricBatch, MetricSample
from ._names import OVERFLOW_LABEL_VALUE, prometheus_name
from ._rollup import MinuteRollup, RollupBackend, job_summaries
from ._service import BREAKER_METRIC, DROPPED_METRIC, OVERFLOW_METRIC, Telemetry
from ._slo import iter_job_events, job_slos
from ._store import RedisSnapshotStore, SnapshotStore, SQLiteSnapshotStore
from ._timer import Timer

__all__ = [
    "BREAKER_METRIC",
    "DEFAULT_RULES",
    "DROPPED_METRIC",
    "OVERFLOW_LABEL_VALUE",
    "OVERFLOW_METRIC",
    "AggregationRule",
    "BucketLayout",
    "Counter",
    "EventHandler",
    "ExplicitBuckets",
    "ExponentialBuckets",
    "Exporter",
    "Gauge",
    "Histogram",
    "Instruments",
    "MetricBatch",
    "MetricSample",
    "MinuteRollup",
    "RedisSnapshotStore",
    "RollupBackend",
    "SQLiteSnapshotStore",
    "SnapshotStore",
    "Telemetry",
    "TelemetryHooks",
    "Timer",
    "create_store",
    "create_telemetry",
    "discover_exporters",
    "exporter_defaults",
    "exporter_options",
    "iter_job_events",
    "job_slos",
    "job_summaries",
    "parse_buckets",
    "prometheus_name",
]
