"""Exporters: the interface, discovery through entry points, and the runners.

Each running exporter has its own thread fed from a bounded queue. The
telemetry thread *offers* batches; when the queue is full the batch is
dropped and counted (``esf.telemetry.dropped{exporter=…}``), so a slow or
hung exporter never blocks the code that emits metrics, the telemetry
thread, or the other exporters. Each export goes through a
:class:`~esf.resilience.CircuitBreaker`; while it is open batches are
skipped (and counted as dropped) instead of being sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from ..errors import CircuitOpen, EsfError, ValidationError
from ..resilience import BreakerState, CircuitBreaker
from ._model import MetricBatch

log = logging.getLogger("esf.telemetry")

#: Entry-point group searched for exporters; names start with :data:`EXPORTER_PREFIX`.
ENTRY_POINT_GROUP = "esf.plugins"
#: Prefix of exporter entry-point names (``telemetry.prometheus``).
EXPORTER_PREFIX = "telemetry."
#: Default bound of each exporter's queue (batches).
DEFAULT_BUFFER_BATCHES = 8


@runtime_checkable
class Exporter(Protocol):
    """Sends metric batches somewhere. One instance per enabled exporter.

    An exporter may set a class attribute ``scope = "cluster"`` to receive the
    cluster-wide merged view (Prometheus does); the default is ``"local"``
    (this process only, as StatsD wants, since the agent adds processes up).
    Methods run on the exporter's own thread, except ``start`` (on the caller
    of ``configure_exporters``) and ``shutdown``.
    """

    def start(self, options: Mapping[str, Any]) -> None:
        """Open connections or sockets; ``options`` come from settings or configuration.

        Raises
        ------
        ValidationError
            When an option is missing or invalid (the exporter is not started).
        """

    def export(self, batch: MetricBatch) -> None:
        """Send one batch of cumulative values. Any exception counts as a failure for the breaker."""

    def shutdown(self) -> None:
        """Release resources; must not raise."""


ExporterFactory = Callable[[], Exporter]


def discover_exporters() -> dict[str, ExporterFactory]:
    """Exporter classes registered under ``esf.plugins`` with names starting ``telemetry.``."""
    found: dict[str, ExporterFactory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.startswith(EXPORTER_PREFIX):
            found[ep.name] = _lazy(ep.load)
    return found


def _lazy(load: Callable[[], Any]) -> ExporterFactory:
    def factory() -> Exporter:
        cls = load()
        exporter = cls()
        if not isinstance(exporter, Exporter):
            raise ValidationError(f"{cls!r} does not implement the Exporter interface (start, export, shutdown)")
        return exporter

    return factory


def canonical_name(name: str) -> str:
    """``"prometheus"`` → ``"telemetry.prometheus"``."""
    return name if name.startswith(EXPORTER_PREFIX) else EXPORTER_PREFIX + name


_STOP = object()


class ExporterRunner:
    """One exporter on its own thread, behind a bounded queue and a circuit breaker."""

    def __init__(
        self,
        name: str,
        exporter: Exporter,
        options: Mapping[str, Any],
        *,
        buffer_batches: int = DEFAULT_BUFFER_BATCHES,
        breaker: CircuitBreaker,
        on_drop: Callable[[str], None],
        stuck_after_s: float = 30.0,
    ) -> None:
        self.name = name
        self.exporter = exporter
        self.options = dict(options)
        self.scope: str = getattr(exporter, "scope", "local")
        self.breaker = breaker
        self._on_drop = on_drop
        self._stuck_after_s = stuck_after_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, buffer_batches))
        self._stopping = threading.Event()
        self.exported = 0
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.busy_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"esf-exporter-{name}", daemon=True)
        self._thread.start()

    def offer(self, batch: MetricBatch) -> bool:
        """Queue ``batch`` without waiting; a full queue drops it (counted). Returns whether it was queued."""
        if self._stopping.is_set():
            return False
        try:
            self._queue.put_nowait(batch)
            return True
        except queue.Full:
            self._drop()
            return False

    def _drop(self) -> None:
        self.dropped += 1
        try:
            self._on_drop(self.name)
        except Exception:  # a metrics callback must never break the runner
            log.exception("telemetry: counting a dropped batch failed")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._stopping.is_set():
                return
            assert isinstance(item, MetricBatch)
            self.busy_since = time.monotonic()
            try:
                self.breaker.call(self.exporter.export, item)
                self.exported += 1
            except CircuitOpen:
                self._drop()
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("telemetry exporter %s failed: %s", self.name, self.last_error)
            finally:
                self.busy_since = None

    def health(self) -> dict[str, Any]:
        """State for ``Telemetry.health()``: breaker state, counts, and whether an export is stuck."""
        busy = self.busy_since
        stuck = busy is not None and time.monotonic() - busy >= self._stuck_after_s
        return {
            "breaker": self.breaker.state,
            "exported": self.exported,
            "failures": self.failures,
            "dropped": self.dropped,
            "queued": self._queue.qsize(),
            "busy": busy is not None,
            "stuck": stuck,
            "last_error": self.last_error,
            "ok": self.breaker.state == "closed" and not stuck,
        }

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (waiting at most ``timeout_s``) and shut the exporter down."""
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the thread sees _stopping after its current export
        self._thread.join(timeout_s)
        try:
            self.exporter.shutdown()
        except Exception:
            log.exception("telemetry exporter %s: shutdown failed", self.name)


class ExporterSet:
    """The running exporters of one Telemetry: configured as a whole, each on its own runner."""

    def __init__(
        self,
        factories: Mapping[str, ExporterFactory],
        *,
        buffer_batches: int,
        breaker_failures: int,
        breaker_reset_s: float,
        stuck_after_s: float,
        on_drop: Callable[[str], None],
        on_breaker_change: Callable[[str, BreakerState], None],
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.factories: dict[str, ExporterFactory] = dict(factories)
        self.defaults: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (defaults or {}).items()}
        self._buffer = buffer_batches
        self._breaker_failures = breaker_failures
        self._breaker_reset_s = breaker_reset_s
        self._stuck_after_s = stuck_after_s
        self._on_drop = on_drop
        self._on_breaker_change = on_breaker_change
        self._lock = threading.Lock()
        self.runners: dict[str, ExporterRunner] = {}

    def configure(self, mapping: Mapping[str, Any], *, start: bool = True) -> None:
        """See ``Telemetry.configure_exporters``; ``start=False`` only validates names and stops exporters."""
        wanted: dict[str, dict[str, Any]] = {}
        for name, opts in mapping.items():
            cname = canonical_name(str(name))
            if opts is False or opts is None:
                continue
            options = {**self.defaults.get(cname, {}), **({} if opts is True else dict(opts))}
            if not options.pop("enabled", True):
                continue
            if cname not in self.factories:
                raise ValidationError(
                    f"unknown exporter {name!r}; known: {sorted(self.factories)} "
                    "(exporters register under the 'esf.plugins' entry-point group as 'telemetry.NAME')"
                )
            wanted[cname] = options
        problems: dict[str, str] = {}
        with self._lock:
            for cname in list(self.runners):
                if cname not in wanted or wanted[cname] != self.runners[cname].options:
                    self.runners.pop(cname).stop()
            for cname, options in wanted.items():
                if cname in self.runners or not start:
                    continue
                try:
                    exporter = self.factories[cname]()
                    exporter.start(options)
                except Exception as exc:
                    problems[cname] = str(exc) if isinstance(exc, EsfError) else f"{type(exc).__name__}: {exc}"
                    continue
                breaker = CircuitBreaker(
                    cname,
                    failure_threshold=self._breaker_failures,
                    reset_timeout_s=self._breaker_reset_s,
                    on_state_change=self._on_breaker_change,
                )
                self._on_breaker_change(cname, "closed")
                self.runners[cname] = ExporterRunner(
                    cname,
                    exporter,
                    options,
                    buffer_batches=self._buffer,
                    breaker=breaker,
                    on_drop=self._on_drop,
                    stuck_after_s=self._stuck_after_s,
                )
        if problems:
            raise ValidationError(
                "exporters not started: " + "; ".join(f"{k}: {v}" for k, v in problems.items()), errors=problems
            )

    def get(self, name: str) -> Any:
        runner = self.runners.get(canonical_name(name))
        return runner.exporter if runner else None

    def offer(self, batch_for: Callable[[str], MetricBatch]) -> int:
        """Offer a batch to every runner (``batch_for(scope)`` builds one per scope). Returns how many queued it."""
        with self._lock:
            runners = list(self.runners.values())
        batches: dict[str, MetricBatch] = {}
        accepted = 0
        for runner in runners:
            if runner.scope not in batches:
                batches[runner.scope] = batch_for(runner.scope)
            accepted += runner.offer(batches[runner.scope])
        return accepted

    def health(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: r.health() for name, r in self.runners.items()}

    def stop_all(self, timeout_s: float) -> None:
        with self._lock:
            runners = list(self.runners.values())
            self.runners = {}
        for runner in runners:
            runner.stop(timeout_s)

    def after_fork(self) -> None:
        # The parent's runner threads do not exist here, and its exporters (sockets) stay the parent's.
        self._lock = threading.Lock()
        self.runners = {}
