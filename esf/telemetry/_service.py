"""The Telemetry service: metrics, events, aggregation rules, cluster view, exporters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..errors import EsfError, ValidationError
from ..lifecycle import track_fork
from ..resilience import BreakerState
from ..settings import TelemetrySettings
from ._aggregate import Rules, collect, render
from ._buckets import BucketLayout, parse_buckets
from ._events import EventBus, EventHandler
from ._exporter_settings import exporter_defaults, exporter_options
from ._exporting import (
    CALL_TIMEOUT_S,
    ExporterFactory,
    ExporterSet,
    canonical_name,
    discover_exporters,
)
from ._instruments import DEFAULT_RULES, Instruments
from ._metrics import Child, Counter, Family, Gauge, Histogram, Kind
from ._model import MAX_WINDOW_S, AggregationRule, MetricBatch, SeriesState, parse_rule
from ._names import check_labels, check_metric_name
from ._process_hooks import track
from ._pusher import Pusher
from ._store import SnapshotStore
from ._timer import Timer

log = logging.getLogger("esf.telemetry")

#: Counter of lookups that hit a metric's label-set cap (label ``metric``).
OVERFLOW_METRIC = "esf.telemetry.label_overflow"
#: Counter of batches an exporter dropped (queue full or breaker open); label ``exporter``.
DROPPED_METRIC = "esf.telemetry.dropped"
#: Gauge of each circuit breaker's state (0 closed, 1 open, 2 half-open); label ``breaker``.
BREAKER_METRIC = "esf.breaker.state"


class Telemetry:
    """Metrics and events for one process, merged cluster-wide through a shared store.

    Build it with :func:`esf.telemetry.create_telemetry`. Emitting never waits
    on I/O: a background thread (:class:`~esf.telemetry._pusher.Pusher`) pushes deltas
    to the store every ``push_interval_s`` and hands batches to exporters every
    ``export_interval_s``.

    Parameters
    ----------
    settings:
        ``TelemetrySettings`` (default: the defaults): limits, intervals, exporters started now and the
        options ``configure_exporters`` lays its own over, breakers, and ``enabled`` (``False`` keeps
        metrics in memory only: no thread, no store, no exporters).
    store:
        Shared store for the cluster-wide view (``None``: this process only).
    node:
        This host's name; with the pid and a random token it identifies the process in the store.
    exporter_factories:
        Extra exporters by name, added to those found through entry points.
    stuck_after_s:
        Seconds an export may run before ``health()`` reports the exporter as stuck.
    exporter_call_timeout_s:
        Seconds ``configure_exporters`` waits for an exporter's ``start`` (and for the ``shutdown`` of
        those it stops) before leaving it behind; ``close`` bounds ``shutdown`` by its own ``timeout_s``.
    """

    def __init__(
        self,
        settings: TelemetrySettings | None = None,
        *,
        store: SnapshotStore | None = None,
        node: str = "local",
        exporter_factories: Mapping[str, ExporterFactory] | None = None,
        stuck_after_s: float = 30.0,
        exporter_call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        ts = settings if settings is not None else TelemetrySettings()
        self.settings = ts
        self.node = node
        self.enabled = ts.enabled
        self.max_label_sets = ts.max_label_sets
        self.max_metrics = ts.max_metrics
        self.push_interval_s = ts.push_interval_s
        self.export_interval_s = ts.export_interval_s
        store = store if ts.enabled else None
        self._families: dict[str, Family] = {}
        self._families_lock = threading.Lock()
        self.rules = Rules()
        for prefix, rule in DEFAULT_RULES.items():
            self.rules.set(prefix, rule)
        #: Recording helpers for ESF services (event appends, config updates, DLQ depth, …).
        self.instruments = Instruments(self)
        self._events = EventBus()
        factories = dict(discover_exporters())
        factories.update({canonical_name(k): v for k, v in (exporter_factories or {}).items()})
        self._exporters = ExporterSet(
            factories,
            buffer_batches=ts.exporter_buffer,
            breaker_failures=ts.breaker_failures,
            breaker_reset_s=ts.breaker_reset_s,
            stuck_after_s=stuck_after_s,
            on_drop=self._count_drop,
            on_breaker_change=self._breaker_changed,
            defaults=exporter_defaults(ts),
            call_timeout_s=exporter_call_timeout_s,
        )
        self.closed = False
        self._pusher = self._new_pusher(store)
        track(self)
        track_fork(self)
        if ts.exporters:
            self.configure_exporters(exporter_options(ts))

    def _new_pusher(self, store: SnapshotStore | None) -> Pusher:
        return Pusher(store, self.node, self._local_states, self.export_now, self.push_interval_s,
                      self.export_interval_s)

    @property
    def proc_id(self) -> str:
        """This process's id in the shared store: ``node:pid:token`` (a forked child gets a new one)."""
        return self._pusher.proc_id

    @property
    def _store(self) -> SnapshotStore | None:
        return self._pusher.store

    # -- emitting -----------------------------------------------------------

    def counter(self, name: str, labels: Mapping[str, str] | None = None) -> Counter:
        """The counter series ``name{labels}``; keep it to make ``inc`` cheapest.

        Raises
        ------
        ValidationError
            When the name or labels are not valid, or ``name`` is another kind of metric.
        """
        fam = self._families.get(name)
        if fam is not None and fam.kind == "counter":
            child = fam.fast.get(tuple(labels.items()) if labels else ())
            if child is not None:
                return child  # type: ignore[return-value]
        return self._resolve("counter", name, labels, None)  # type: ignore[return-value]

    def gauge(self, name: str, labels: Mapping[str, str] | None = None) -> Gauge:
        """The gauge series ``name{labels}`` (``set``, ``inc``, ``dec``). Raises like :meth:`counter`."""
        fam = self._families.get(name)
        if fam is not None and fam.kind == "gauge":
            child = fam.fast.get(tuple(labels.items()) if labels else ())
            if child is not None:
                return child  # type: ignore[return-value]
        return self._resolve("gauge", name, labels, None)  # type: ignore[return-value]

    def histogram(
        self, name: str, labels: Mapping[str, str] | None = None, buckets: object | None = None
    ) -> Histogram:
        """The histogram series ``name{labels}`` (``observe(value)``, values ≥ 0).

        Parameters
        ----------
        buckets:
            Pins this metric's layout (``"exp:8"``, ``"explicit:…"`` or a list of upper bounds) instead
            of the layout configured for its prefix. Every process must pin the same layout.

        Raises
        ------
        ValidationError
            Like :meth:`counter`, or when ``buckets`` differs from the layout the metric already uses.
        """
        if buckets is None:
            fam = self._families.get(name)
            if fam is not None and fam.kind == "histogram":
                child = fam.fast.get(tuple(labels.items()) if labels else ())
                if child is not None:
                    return child  # type: ignore[return-value]
        layout = parse_buckets(buckets) if buckets is not None else None
        return self._resolve("histogram", name, labels, layout)  # type: ignore[return-value]

    def timer(self, name: str, labels: Mapping[str, str] | None = None, buckets: object | None = None) -> Timer:
        """A :class:`Timer` observing seconds into the histogram ``name{labels}``."""
        return Timer(self.histogram(name, labels, buckets))

    def event(
        self, name: str, measurements: Mapping[str, float], metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Emit an event to the attached handlers (``:telemetry.execute``).

        Raises
        ------
        ValidationError
            When the name is not valid or a measurement is not a finite number.
        """
        self._events.emit(name, measurements, metadata)

    def attach(self, handler_id: str, event_prefix: str, handler: EventHandler) -> None:
        """Call ``handler(name, measurements, metadata)`` for events under ``event_prefix``; see EventBus."""
        self._events.attach(handler_id, event_prefix, handler)

    def detach(self, handler_id: str) -> bool:
        """Remove an event handler; returns whether it was attached."""
        return self._events.detach(handler_id)

    def _resolve(self, kind: Kind, name: str, labels: Mapping[str, str] | None, layout: BucketLayout | None) -> Child:
        label_tuple = check_labels(labels)
        fam = self._families.get(name)
        if fam is None:
            check_metric_name(name)
            with self._families_lock:
                fam = self._families.get(name)
                if fam is None:
                    if len(self._families) >= self.max_metrics:
                        raise ValidationError(
                            f"metric {name!r} refused: this process already has {self.max_metrics} metrics "
                            "(telemetry.max_metrics); put variable parts in labels, not in names"
                        )
                    fam_layout = layout or (self.rules.for_name(name).buckets if kind == "histogram" else None)
                    fam = Family(kind, name, self.max_label_sets, self._count_overflow, fam_layout, layout is not None)
                    self._families[name] = fam
        if fam.kind != kind:
            raise ValidationError(f"metric {name!r} is a {fam.kind}, not a {kind}", errors={"name": "kind mismatch"})
        if layout is not None and fam.layout is not None and layout.spec != fam.layout.spec:
            raise ValidationError(
                f"histogram {name!r} uses buckets {fam.layout.spec!r}, not {layout.spec!r}",
                errors={"buckets": "layout differs"},
            )
        child, overflowed = fam.child(label_tuple)
        if not overflowed:
            if len(fam.fast) >= 4 * self.max_label_sets:
                fam.fast = {}
            fam.fast[tuple(labels.items()) if labels else ()] = child
        self._ensure_running()
        return child

    def _count_overflow(self, fam: Family) -> None:
        if fam.name != OVERFLOW_METRIC:
            self.counter(OVERFLOW_METRIC, {"metric": fam.name}).inc()

    # -- aggregation settings --------------------------------------------------

    def configure(
        self,
        prefix: str,
        *,
        buckets: object | None = None,
        windows: object | None = None,
        gauge_merge: str | None = None,
    ) -> AggregationRule:
        """Set how metrics whose names start with ``prefix`` (``""``: all) are aggregated.

        A new bucket layout applies at once to the matching histograms of this
        process (what was recorded under the old layout is kept and still
        counts). Set the same rules in every process (the configuration
        service does) so their buckets merge exactly.

        Raises
        ------
        ValidationError
            When a value is invalid (see :class:`AggregationRule`).

        Returns
        -------
        The rule now in force for ``prefix``.
        """
        spec: dict[str, Any] = {}
        if buckets is not None:
            spec["buckets"] = buckets
        if windows is not None:
            spec["windows"] = windows
        if gauge_merge is not None:
            spec["gauge_merge"] = gauge_merge
        rule = parse_rule(spec, self.rules.for_name(prefix) if prefix else self.rules.as_dict()[""])
        self.rules.set(prefix, rule)
        self._relayout()
        return rule

    def _relayout(self) -> None:
        with self._families_lock:
            families = list(self._families.values())
        for fam in families:
            if fam.kind == "histogram" and not fam.pinned:
                wanted = self.rules.for_name(fam.name).buckets
                if fam.layout is None or fam.layout.spec != wanted.spec:
                    fam.relayout(wanted)

    def apply_config(self, mapping: Mapping[str, Any]) -> None:
        """Apply telemetry configuration (as the configuration service holds it).

        Accepts ``{"aggregation": {prefix: {"buckets": …, "windows": […], "gauge_merge": …}},
        "exporters": {name: options}}``, or the same under flat keys ``telemetry.aggregation`` and
        ``telemetry.exporters``; other keys are ignored. Everything is validated before anything changes.

        Raises
        ------
        ValidationError
            When a rule or an exporter's options are invalid.
        """
        agg = mapping.get("aggregation", mapping.get("telemetry.aggregation"))
        exporters = mapping.get("exporters", mapping.get("telemetry.exporters"))
        rules: dict[str, AggregationRule] = {}
        if agg is not None:
            if not isinstance(agg, Mapping):
                raise ValidationError("telemetry.aggregation: expected a mapping of prefix to settings")
            base = AggregationRule()
            for prefix, spec in agg.items():
                if not isinstance(spec, Mapping):
                    raise ValidationError(f"telemetry.aggregation.{prefix}: expected a mapping")
                rules[str(prefix)] = parse_rule(spec, base)
        if exporters is not None and not isinstance(exporters, Mapping):
            raise ValidationError("telemetry.exporters: expected a mapping of exporter name to options")
        for prefix, rule in rules.items():
            self.rules.set(prefix, rule)
        if rules:
            self._relayout()
        if exporters is not None:
            self.configure_exporters(exporters)

    # -- exporters ------------------------------------------------------------

    def configure_exporters(self, mapping: Mapping[str, Any]) -> None:
        """Make the running exporters match ``mapping`` (name → options, or ``False`` to disable).

        Names are entry-point names (``telemetry.prometheus``) or short ones (``prometheus``); the
        options given are laid over the defaults from settings (``exporter_defaults``).
        Exporters not in ``mapping`` are stopped; those whose options are unchanged keep running.
        An option ``enabled: false`` disables one. In a forked child, exporters of the parent are
        not running: call this again in the child if it should export.

        Raises
        ------
        ValidationError
            When a name is unknown or an exporter refuses its options; the others are still applied.
        """
        self._exporters.configure(mapping, start=self.enabled)
        if self._exporters.runners:
            self._ensure_running()

    def _count_drop(self, exporter: str) -> None:
        self.counter(DROPPED_METRIC, {"exporter": exporter}).inc()

    def _breaker_changed(self, name: str, state: BreakerState) -> None:
        self.instruments.record_breaker_state(name, state)

    def exporter(self, name: str) -> Any:
        """The running exporter object named ``name`` (for tests and tools), or ``None``."""
        return self._exporters.get(name)

    def export_now(self) -> int:
        """Offer one batch to every running exporter now; returns how many accepted it (queue not full)."""
        return self._exporters.offer(lambda scope: self.batch(cluster=scope == "cluster"))

    # -- reading --------------------------------------------------------------

    def batch(self, prefix: str | None = None, cluster: bool = True) -> MetricBatch:
        """Every series as :class:`MetricSample` values (cluster-wide when a store is set and ``cluster``).

        When the store cannot be read the batch is local (``scope == "local"``) and ``health()`` says why.
        """
        now = time.time()
        span = max((w for r in self.rules.as_dict().values() for w in r.windows_s), default=300)
        store = self._store
        if cluster and store is not None:
            if self._families:
                self.flush()  # include this process's latest increments (a reader with no metrics stays unlisted)
            try:
                view = store.read(min(span, MAX_WINDOW_S))
            except EsfError as exc:
                self._pusher.store_error = str(exc)
            else:
                samples = render(view.states, view.windows, self.rules, now, prefix)
                return MetricBatch("cluster", now, tuple(samples), processes=max(1, len(view.processes)))
        states = self._local_states()
        samples = render(states, self._pusher.windows.copy(), self.rules, now, prefix)
        return MetricBatch("local", now, tuple(samples), processes=1)

    def snapshot(self, prefix: str | None = None, cluster: bool = True) -> dict[str, Any]:
        """Current values as a JSON-safe dict.

        Returns
        -------
        ``{"scope": "cluster"|"local", "time": unix_s, "processes": n, "metrics": {name: {"kind": …,
        "series": [{"labels": {…}, "value": …, "rates": {"1m": …, "5m": …}}, …]}}}``; histogram series carry
        ``count``, ``sum``, ``p50``, ``p90``, ``p99``, ``buckets`` ([upper, count] pairs), ``layouts`` and
        ``relative_error``.
        """
        b = self.batch(prefix, cluster)
        metrics: dict[str, Any] = {}
        for s in b.samples:
            entry = metrics.setdefault(s.name, {"kind": s.kind, "series": []})
            entry["series"].append(s.to_dict())
        out: dict[str, Any] = {"scope": b.scope, "time": b.time, "processes": b.processes, "metrics": metrics}
        if cluster and b.scope == "local" and self._store is not None:
            out["degraded"] = self._pusher.store_error
        return out

    def _local_states(self) -> dict[str, SeriesState]:
        with self._families_lock:
            families = list(self._families.values())
        return collect(families)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded", "ok": bool, "process": id, "store": {...}, "exporters": {name: {...}}}``.

        Degraded when the shared store cannot be reached (metrics are kept and pushed later) or an
        exporter's breaker is not closed or an export is stuck. Metrics are still recorded either way.
        """
        exporters = self._exporters.health()
        store = {
            "kind": type(self._store).__name__ if self._store else None,
            "ok": self._pusher.store_error is None,
            "error": self._pusher.store_error,
            "pending_batch": self._pusher.pending is not None,
            "last_push": self._pusher.last_push,
        }
        ok = bool(store["ok"]) and all(e["ok"] for e in exporters.values())
        return {
            "status": "ok" if ok else "degraded",
            "ok": ok,
            "process": self.proc_id,
            "store": store,
            "exporters": exporters,
        }

    # -- background work --------------------------------------------------------

    def start(self) -> None:
        """Start the background thread now (it also starts with the first metric lookup).

        In a forked child (a Celery prefork child) the thread starts with the first lookup by name;
        call ``start()`` from ``worker_process_init`` when the child may only use series resolved
        before the fork, so that it pushes every interval rather than only at ``close()``.
        """
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self.enabled and not self.closed:
            self._pusher.ensure_running()

    def flush(self, *, final: bool = False) -> bool:
        """Push this process's increments to the store now. Returns whether everything was pushed."""
        return self._pusher.flush(final=final)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and exporters, push a final batch (the process's gauges are removed).

        Waits at most ``timeout_s`` seconds for the thread and ``timeout_s`` for all the exporters
        together: an exporter whose ``export`` or ``shutdown`` never returns is left behind (logged).
        """
        if self.closed:
            return
        self.closed = True
        self._pusher.stop(timeout_s)
        self._exporters.stop_all(timeout_s)
        store = self._store
        if store is not None:
            self.flush(final=True)
            store.close()

    def after_fork(self) -> None:
        # In a forked child: start from zero (the parent still pushes its own totals), new locks,
        # no threads, no exporters (the parent runs them), a fresh store connection.
        self._families_lock = threading.Lock()
        for fam in self._families.values():
            fam._after_fork()
        self._exporters.after_fork()
        store = self._store
        self.closed = False
        self._pusher = self._new_pusher(store)
        if store is not None:
            store.reset_after_fork()
        # No thread is started here (a fork handler should do as little as possible): the thread starts
        # with the child's first metric lookup, or with start() (Celery: the worker_process_init signal).

