"""A Foundation for applications' own tests: the embedded backends, a Celery worker in a thread."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from .._worker_runtime import WorkerRuntime
from ..errors import Timeout
from ..foundation import Foundation
from ..settings import Settings

if TYPE_CHECKING:
    from ..events import StoredEvent
    from ..hooks import JobHooks
    from ..jobs._deadletter_entry import DeadLetter

__all__ = ["TestFoundation", "foundation"]

T = TypeVar("T")

#: Longest wait, in seconds, of :meth:`TestFoundation.wait_for` unless told (a bound, not a speed requirement).
DEFAULT_WAIT_S = 30.0


class _ThreadWorkerRuntime(WorkerRuntime):
    """The worker of a TestFoundation is a thread of this process, and never forks: nothing to preload."""

    def boot(self) -> None:
        """Nothing to do before the worker thread starts."""


class TestFoundation(Foundation):
    """A :class:`~esf.Foundation` whose jobs run in this process, with ESF's own semantics.

    Everything lives in a temporary directory (removed on :meth:`close`): the
    SQLite broker, results, event store, configuration, dead letters and
    telemetry, exactly as in the embedded deployment. :meth:`start` runs a
    Celery worker (solo pool) in a thread of this process, so retries, backoff,
    the dead-letter queues, hooks and the job history behave as on a real
    worker. Declare the jobs first, or at any time (a running worker learns
    new ones). Assert on :meth:`dead_letters`, :meth:`metrics` and
    :meth:`history`.

    Parameters:
        settings: settings to start from; ``data_dir`` is replaced by a temporary directory unless
            ``keep_data_dir`` is true. Defaults: ``Settings()`` (embedded, telemetry on).
        hooks: job lifecycle hooks, as for ``Foundation``.
        keep_data_dir: use ``settings.data_dir`` as it is (and leave it in place on close).
        backends: injected backends, as for ``Foundation`` (``events=InMemoryEventRecorder()``…).
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say
    _runtime_class = _ThreadWorkerRuntime

    def __init__(self, settings: Settings | None = None, *, hooks: Sequence[JobHooks] = (),
                 keep_data_dir: bool = False, **backends: Any) -> None:
        settings = settings or Settings()
        self._tmp: str | None = None
        if not keep_data_dir:
            self._tmp = tempfile.mkdtemp(prefix="esf-test-")
            settings = replace(settings, data_dir=self._tmp)
        super().__init__(settings, hooks=hooks, **backends)
        self._stack = ExitStack()
        self._worker: Any = None

    # -- the worker -------------------------------------------------------------------------------

    def start(self, *, shutdown_timeout_s: float = 10.0) -> TestFoundation:
        """Start the worker thread (idempotent); returns ``self``.

        Raises:
            Timeout: the worker was not consuming within 30 seconds.
        """
        if self._worker is not None:
            return self
        from celery.contrib.testing.worker import start_worker

        _ = self.jobs  # ESF's own tasks are declared before the worker reads the registry
        self._worker = self._stack.enter_context(start_worker(
            self.celery, pool="solo", concurrency=1, perform_ping_check=False,
            shutdown_timeout=shutdown_timeout_s, loglevel="WARNING"))
        return self

    def stop(self) -> None:
        """Stop the worker thread (jobs still queued stay in the broker)."""
        self._worker = None
        self._stack.close()

    @property
    def running(self) -> bool:
        """True while the worker thread runs."""
        return self._worker is not None

    def job(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Declare a job, as :meth:`Foundation.job`; a running worker consumes it from now on."""
        declared = super().job(fn, **options)
        if fn is None:
            decorate = declared

            def decorator(f: Callable[..., Any]) -> Any:
                job = decorate(f)
                self._refresh_worker()
                return job

            return decorator
        self._refresh_worker()
        return declared

    def _refresh_worker(self) -> None:
        consumer = getattr(self._worker, "consumer", None)
        if consumer is not None and getattr(consumer, "strategies", None) is not None:
            consumer.update_strategies()

    # -- what tests assert on ------------------------------------------------------------------------

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Every dead letter (of ``queue``, or of every queue), oldest first in each queue."""
        return list(self.jobs.dlq.entries(queue))

    def metrics(self, prefix: str | None = None) -> dict[str, Any]:
        """This process's metrics, ``{name: {"kind": …, "series": [{"labels": …, "value": …}, …]}}``.

        The shape is that of ``fnd.telemetry.snapshot()["metrics"]``.
        """
        return dict(self.telemetry.snapshot(prefix, cluster=False)["metrics"])

    def metric_value(self, name: str, **labels: str) -> float:
        """The sum over ``name``'s series whose labels include ``labels`` (0 when none): counters and
        gauges add their values, histograms their counts of observations."""
        found = self.metrics(name).get(name, {"series": []})
        return float(sum(s["value"] if "value" in s else s["count"] for s in found["series"]
                         if all(s["labels"].get(k) == v for k, v in labels.items())))

    def history(self, job_id: str) -> list[StoredEvent]:
        """The lifecycle events of one job (``job.enqueued``, ``job.started``, ``job.retried``…), in order."""
        from ..events import job_stream_id

        self.flush()
        return self.events.read_stream(job_stream_id(job_id))

    def wait_for(self, condition: Callable[[], T], *, timeout: float = DEFAULT_WAIT_S,
                 what: str = "condition") -> T:
        """Poll ``condition`` until it returns a truthy value, and return it.

        Raises:
            Timeout: ``condition`` stayed falsy for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise Timeout(f"{what}: not reached within {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the worker, close every service, and remove the temporary directory."""
        try:
            self.stop()
            super().close()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def __enter__(self) -> TestFoundation:
        return self


@contextmanager
def foundation(settings: Settings | None = None, *, hooks: Sequence[JobHooks] = (),
               start: bool = True, **backends: Any) -> Iterator[TestFoundation]:
    """A :class:`TestFoundation`, its worker started (unless ``start`` is false), closed at the end::

        with esf.testing.foundation() as fnd:
            @fnd.job(retries=2, backoff=0.1)
            def charge(order_id: int) -> str: ...

            assert charge.enqueue(7).wait(30) == "charged"
            assert fnd.dead_letters() == []
    """
    fnd = TestFoundation(settings, hooks=hooks, **backends)
    try:
        if start:
            fnd.start()
        yield fnd
    finally:
        fnd.close()
