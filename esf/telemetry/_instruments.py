"""Instrumentation for free: job hooks, and the metric names other services use.

Metric names (Prometheus names replace ``.`` with ``_``; counters add ``_total``):

==============================================  =========  =================  ===========================
name                                            kind       labels             recorded by
==============================================  =========  =================  ===========================
esf.jobs.enqueued / started / succeeded         counter    job, queue         :class:`TelemetryHooks`
esf.jobs.failed / retried / dead_lettered       counter    job, queue         :class:`TelemetryHooks`
esf.jobs.replayed                               counter    job, queue         :class:`TelemetryHooks`
esf.jobs.runtime_seconds                        histogram  job, queue         :class:`TelemetryHooks`
esf.jobs.queue_wait_seconds                     histogram  job, queue         :class:`TelemetryHooks`
esf.events.appended                             counter    —                  ``record_event_append``
esf.events.append_seconds                       histogram  —                  ``record_event_append``
esf.events.spool_depth                          gauge      —                  ``record_spool_depth``
esf.config.updates                              counter    —                  ``record_config_update``
esf.config.version                              gauge      (max)              ``record_config_update``
esf.config.propagation_lag_seconds              histogram  —                  ``record_config_update``
esf.dlq.depth                                   gauge      queue (max)        ``set_dlq_depth``
esf.cache.hits / misses                         counter    cache              ``record_cache``
esf.flags.evaluations                           counter    flag, variant,     ``record_flag``
                                                           reason
esf.breaker.state                               gauge      breaker (max)      ``record_breaker_state``
esf.telemetry.dropped                           counter    exporter           exporter runners
esf.telemetry.label_overflow                    counter    metric             label-set cap
==============================================  =========  =================  ===========================

"(max)": gauges that describe shared state are merged across processes with
``max`` instead of ``sum`` (see :data:`DEFAULT_RULES`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Retry, SkipJob
from ..hooks import JobContext, JobHooks
from ..resilience import STATE_VALUES, BreakerState
from ._model import AggregationRule

if TYPE_CHECKING:
    from ._metrics import Counter
    from ._service import Telemetry

#: Aggregation rules the service starts with (prefix -> rule).
DEFAULT_RULES: dict[str, AggregationRule] = {
    "esf.config.version": AggregationRule(gauge_merge="max"),
    "esf.config.diverged_nodes": AggregationRule(gauge_merge="max"),
    "esf.dlq.depth": AggregationRule(gauge_merge="max"),
    "esf.breaker.": AggregationRule(gauge_merge="max"),
}


class Instruments:
    """Small recording helpers for ESF services: ``fnd.telemetry.instruments.record_…``.

    Every method records into the service's metrics and never raises for
    well-formed numbers (negative durations are clamped to 0).
    """

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def record_event_append(self, n: int, latency_s: float) -> None:
        """``n`` events were appended in one call that took ``latency_s`` seconds."""
        self._t.counter("esf.events.appended").inc(n)
        self._t.histogram("esf.events.append_seconds").observe(max(0.0, latency_s))

    def record_spool_depth(self, n: int) -> None:
        """Events waiting in this process's local spool."""
        self._t.gauge("esf.events.spool_depth").set(n)

    def record_config_update(self, version: int, lag_s: float | None = None) -> None:
        """This node applied configuration ``version``, ``lag_s`` seconds after it was written."""
        self._t.counter("esf.config.updates").inc()
        self._t.gauge("esf.config.version").set(version)
        if lag_s is not None:
            self._t.histogram("esf.config.propagation_lag_seconds").observe(max(0.0, lag_s))

    def set_dlq_depth(self, queue: str, n: int) -> None:
        """Messages in ``queue``'s dead-letter queue (as last measured)."""
        self._t.gauge("esf.dlq.depth", {"queue": queue}).set(n)

    def record_cache(self, cache: str, hit: bool) -> None:
        """One cache lookup."""
        self._t.counter("esf.cache.hits" if hit else "esf.cache.misses", {"cache": cache}).inc()

    def record_breaker_state(self, breaker: str, state: BreakerState) -> None:
        """A circuit breaker changed state: pass this method as ``CircuitBreaker(on_state_change=…)``."""
        self._t.gauge("esf.breaker.state", {"breaker": breaker}).set(STATE_VALUES[state])

    def record_flag(self, flag: str, variant: str, reason: str) -> None:
        """One feature-flag evaluation: its variant (``""`` on error) and reason."""
        self.flag_counter(flag, variant, reason).inc()

    def flag_counter(self, flag: str, variant: str, reason: str) -> Counter:
        """The evaluation counter of one flag, variant and reason (kept by the flag service: one lookup)."""
        return self._t.counter("esf.flags.evaluations", {"flag": flag, "variant": variant, "reason": reason})


def _job_labels(ctx: JobContext) -> dict[str, str]:
    return {"job": ctx.job_name, "queue": ctx.queue}


class TelemetryHooks(JobHooks):
    """Job metrics from the lifecycle hooks (register with ``Foundation.add_hooks``).

    ``telemetry`` may be the service or a callable returning it (resolved at the first hook call).
    Counts every step by job and queue; observes ``runtime_s`` and the queue
    wait (``started_at - enqueued_at``, for every attempt) in histograms.
    A ``Retry`` request is neither a success nor a failure (``after_retry``
    counts it); ``SkipJob`` counts as a success.
    """

    def __init__(self, telemetry: Telemetry | Callable[[], Telemetry]) -> None:
        # A callable defers building the service until the first hook runs (Foundation registers
        # its hooks before it creates its services).
        self._source = telemetry
        self._resolved: Telemetry | None = None

    @property
    def _t(self) -> Telemetry:
        tel = self._resolved
        if tel is None:
            source = self._source
            tel = source() if callable(source) else source
            self._resolved = tel
        return tel

    def after_enqueue(self, ctx: JobContext) -> None:
        """Count ``esf.jobs.enqueued``."""
        self._t.counter("esf.jobs.enqueued", _job_labels(ctx)).inc()

    def before_process(self, ctx: JobContext) -> None:
        """Count ``esf.jobs.started`` and observe the queue wait."""
        labels = _job_labels(ctx)
        self._t.counter("esf.jobs.started", labels).inc()
        if ctx.enqueued_at is not None:
            started = ctx.started_at if ctx.started_at is not None else time.time()
            self._t.histogram("esf.jobs.queue_wait_seconds", labels).observe(max(0.0, started - ctx.enqueued_at))

    def after_process(
        self, ctx: JobContext, *, result: Any = None, exc: BaseException | None = None, runtime_s: float = 0.0
    ) -> None:
        """Observe the run time; count a success or a failure."""
        labels = _job_labels(ctx)
        self._t.histogram("esf.jobs.runtime_seconds", labels).observe(max(0.0, float(runtime_s)))
        if exc is None or isinstance(exc, SkipJob):
            self._t.counter("esf.jobs.succeeded", labels).inc()
        elif not isinstance(exc, Retry):
            self._t.counter("esf.jobs.failed", labels).inc()

    def after_retry(self, ctx: JobContext, *, exc: BaseException, delay_s: float) -> None:
        """Count ``esf.jobs.retried``."""
        self._t.counter("esf.jobs.retried", _job_labels(ctx)).inc()

    def after_dead_letter(self, entry: Any) -> None:
        """Count ``esf.jobs.dead_lettered`` (the entry's attributes are read defensively)."""
        self._t.counter("esf.jobs.dead_lettered", _entry_labels(entry)).inc()

    def after_replay(self, entry: Any, *, job_id: str) -> None:
        """Count ``esf.jobs.replayed``."""
        self._t.counter("esf.jobs.replayed", _entry_labels(entry)).inc()


def _entry_labels(entry: Any) -> dict[str, str]:
    job = getattr(entry, "job", None) or getattr(entry, "job_name", None) or "unknown"
    queue = getattr(entry, "queue", None) or "unknown"
    if isinstance(queue, str) and queue.endswith(".dlq"):
        queue = queue[: -len(".dlq")]
    return {"job": str(job), "queue": str(queue)}
