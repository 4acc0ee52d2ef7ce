"""The one place where ESF connects Celery signals; they are forwarded to the Foundation's worker runtime
(``fnd._runtime``, see ``esf._worker_runtime``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals
from celery._state import get_current_worker_task

from esf.jobs._meta import H_CORRELATION, H_PARENT
from esf.jobs._task import EsfTask, request_headers

log = logging.getLogger("esf.workers")

_connected = False

#: Seconds between two tries of a deferred broker check while the broker stops answering again.
DEFERRED_CHECK_INTERVAL_S = 1.0


def connect() -> None:
    """Connect ESF's signal handlers (idempotent)."""
    global _connected
    if _connected:
        return
    signals.before_task_publish.connect(_propagate_correlation, weak=False)
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    _connected = True


def _propagate_correlation(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """A message sent while a job runs (a chain's next step, a chord body…) keeps its correlation id."""
    if headers is None or headers.get(H_CORRELATION):
        return
    task = get_current_worker_task()
    if not isinstance(task, EsfTask):
        return
    current = request_headers(task.request)
    if current.get(H_CORRELATION):
        headers[H_CORRELATION] = current[H_CORRELATION]
        headers.setdefault(H_PARENT, str(task.request.id))


def _foundation(sender: Any) -> Any:
    app = getattr(sender, "app", None)
    return getattr(app, "foundation", None)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    fnd = _foundation(sender)
    if fnd is not None:
        fnd._runtime.boot()
        # Before the first job is consumed: on RabbitMQ a message the broker dead-letters
        # into an exchange or queue that does not exist yet would be dropped.
        try:
            fnd.jobs.dlq.declare_all()
        except Exception:
            log.exception("could not declare the dead-letter queues at start; each is declared on first use")


#: Foundations whose broker checks wait for the worker's first connection.
_deferred_checks: list[Any] = []


#: Deferred checks that refused the broker: the worker stopped, ``run_worker`` raises the error.
_refusals: list[tuple[Any, Exception]] = []


def check_broker_when_connected(fnd: Any) -> None:
    """Run ``fnd._runtime.check_broker()`` once the worker has connected to its broker, before it consumes."""
    _deferred_checks.append(fnd)


def take_refusal(fnd: Any) -> Exception | None:
    """The error of ``fnd``'s deferred broker check when it stopped the worker (once), else None."""
    for index, (refused, exc) in enumerate(_refusals):
        if refused is fnd:
            del _refusals[index]
            return exc
    return None


def _run_deferred_check(fnd: Any) -> None:
    """The broker check of a worker that started before its broker: a broker found unfit stops the worker
    (exit code 1) before it consumes a job; one that stops answering again is waited for."""
    from celery.exceptions import WorkerShutdown
    from celery.worker import state

    from esf.errors import ServiceUnavailable, SettingsError

    while True:
        try:
            fnd._runtime.check_broker()
        except SettingsError as exc:
            log.critical("%s", exc)
            _refusals.append((fnd, exc))
            raise WorkerShutdown(1) from None
        except ServiceUnavailable:
            if state.should_stop is not None or state.should_terminate is not None:
                return
            time.sleep(DEFERRED_CHECK_INTERVAL_S)
            continue
        log.info("broker checked now that it answers")
        return


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    fnd = _foundation(sender)
    if fnd is None:
        return
    if any(f is fnd for f in _deferred_checks):
        _deferred_checks[:] = [f for f in _deferred_checks if f is not fnd]
        _run_deferred_check(fnd)
    consumer = getattr(sender, "task_consumer", None)
    queues = tuple(q.name for q in getattr(consumer, "queues", ()) or ())
    fnd._runtime.started(queues=queues)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    fnd = _foundation(sender)
    if fnd is not None:
        fnd._runtime.stopped()


def _on_process_init(sender: Any = None, **_: Any) -> None:
    from esf.foundation import Foundation

    # Each Foundation and service already dropped its parent's state at the fork (esf.lifecycle).
    for fnd in Foundation.instances():
        fnd._runtime.pool_process_started()


def _on_process_shutdown(sender: Any = None, **_: Any) -> None:
    """A pool process is exiting (it skips ``atexit``): flush buffered events and metrics."""
    from esf.foundation import Foundation

    for fnd in Foundation.instances():
        try:
            fnd.close()
        except Exception:
            log.exception("closing the Foundation in a pool process failed")
