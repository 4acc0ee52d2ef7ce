"""Exporters: the interface, discovery through entry points, and the runners.

Each running exporter has its own thread fed from a bounded queue. The
telemetry thread *offers* batches; when the queue is full the batch is
dropped and counted (``esf.telemetry.dropped{exporter=…}``), so a slow or
hung exporter never blocks the code that emits metrics, the telemetry
thread, or the other exporters. Each export goes through a
:class:`~esf.resilience.CircuitBreaker`; while it is open batches are
skipped (and counted as dropped) instead of being sent.

An exporter's ``start`` and ``shutdown`` run on a helper thread that the
caller waits for with a deadline (:data:`CALL_TIMEOUT_S` for ``start``, the
``timeout_s`` of ``close`` for ``shutdown``), so ``configure_exporters`` and
``Telemetry.close`` return in bounded time even behind an exporter that never
returns. An exporter left behind is logged; its thread is a daemon.
"""

from __future__ import annotations

import functools
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
#: Seconds the caller of ``configure_exporters`` waits for an exporter's ``start`` (and for the ``shutdown``
#: of the exporters it stops) before leaving it behind.
CALL_TIMEOUT_S = 5.0


class BoundedCall:
    """``fn`` running on a daemon thread, which the caller waits for with a deadline.

    Parameters:
        fn: what to run.
        name: names the thread (``esf-exporter-call-NAME``) and the log lines.
        on_late: run on that thread if ``fn`` returns normally after :meth:`abandon`
            (e.g. shut down an exporter whose ``start`` finished too late to be used).
    """

    def __init__(self, fn: Callable[[], object], name: str, on_late: Callable[[], object] | None = None) -> None:
        self.error: BaseException | None = None
        self._fn = fn
        self._name = name
        self._on_late = on_late
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._run, name=f"esf-exporter-call-{name}", daemon=True).start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # reported to the caller, never raised on this helper thread
            self.error = exc
        with self._lock:
            self._done.set()
            late = self._abandoned and self.error is None
        if late and self._on_late is not None:
            try:
                self._on_late()
            except Exception:
                log.exception("telemetry exporter %s: clean-up after a late return failed", self._name)

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds; True when ``fn`` has returned (see :attr:`error`)."""
        return self._done.wait(max(0.0, timeout_s))

    def abandon(self) -> bool:
        """Stop waiting for good; True when ``fn`` had returned after all (then ``on_late`` never runs)."""
        with self._lock:
            self._abandoned = not self._done.is_set()
            return not self._abandoned


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

    def signal_stop(self) -> None:
        """Ask the thread to stop after its current export; queue nothing more."""
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the thread sees _stopping after its current export

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread and shut the exporter down, waiting at most ``timeout_s`` seconds in all.

        Returns:
            False when the exporter did not finish in time (it is left behind, on daemon threads).
        """
        return not stop_runners([self], timeout_s)


def stop_runners(runners: list[ExporterRunner], timeout_s: float) -> list[str]:
    """Stop ``runners`` together within ``timeout_s`` seconds overall, however long their exporters block.

    Each thread gets up to half the time to finish its current export; then
    every exporter's ``shutdown`` runs on a helper thread (it may be what
    unblocks a hung export) and is waited for until the deadline.

    Returns:
        The names of the exporters whose thread or ``shutdown`` had not returned by the deadline.
    """
    start = time.monotonic()
    deadline = start + max(0.0, timeout_s)
    for runner in runners:
        runner.signal_stop()
    for runner in runners:
        runner._thread.join(max(0.0, start + timeout_s / 2 - time.monotonic()))
    calls = [(runner, BoundedCall(runner.exporter.shutdown, runner.name)) for runner in runners]
    left: list[str] = []
    for runner, call in calls:
        finished = call.wait(deadline - time.monotonic()) or call.abandon()
        if finished and call.error is not None:
            log.error("telemetry exporter %s: shutdown failed: %s", runner.name, type(call.error).__name__)
        runner._thread.join(max(0.0, deadline - time.monotonic()))
        if not finished or runner._thread.is_alive():
            left.append(runner.name)
    if left:
        log.warning("telemetry exporters %s did not stop within %.1f s; left behind", sorted(left), timeout_s)
    return left


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
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        #: Seconds :meth:`configure` waits for an exporter's ``start``, and for those it stops.
        self.call_timeout_s = call_timeout_s
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
            stopping = [self.runners.pop(cname) for cname in list(self.runners)
                        if cname not in wanted or wanted[cname] != self.runners[cname].options]
        if stopping:
            stop_runners(stopping, self.call_timeout_s)
        with self._lock:
            for cname, options in wanted.items():
                if cname in self.runners or not start:
                    continue
                try:
                    exporter = self.factories[cname]()
                except Exception as exc:
                    problems[cname] = str(exc) if isinstance(exc, EsfError) else f"{type(exc).__name__}: {exc}"
                    continue
                call = BoundedCall(functools.partial(exporter.start, options), cname, on_late=exporter.shutdown)
                if not call.wait(self.call_timeout_s) and not call.abandon():
                    problems[cname] = f"start did not return within {self.call_timeout_s} s; left behind"
                    continue
                error = call.error
                if error is not None:
                    problems[cname] = (str(error) if isinstance(error, EsfError)
                                       else f"{type(error).__name__}: {error}")
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

    def stop_all(self, timeout_s: float) -> list[str]:
        """Stop every exporter within ``timeout_s`` seconds overall; returns the names left behind."""
        with self._lock:
            runners = list(self.runners.values())
            self.runners = {}
        return stop_runners(runners, timeout_s)

    def after_fork(self) -> None:
        # The parent's runner threads do not exist here, and its exporters (sockets) stay the parent's.
        self._lock = threading.Lock()
        self.runners = {}
