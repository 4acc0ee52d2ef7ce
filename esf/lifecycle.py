"""ServiceLifecycle: the hooks through which a process's life reaches each service that holds state across it.

A worker's main process boots, forks pool processes, consumes, and shuts down; each service that owns
threads, connections or per-process state across those steps implements the hooks it needs (dramatiq's
middleware ``before_worker_boot``/``after_process_boot``/``before_worker_shutdown``). The Foundation's
worker runtime (``esf._worker_runtime``) calls the worker hooks of the services it built, from the
Celery signals connected in ``workers/signals.py``, and ``Foundation.close()`` calls their ``close``;
neither reaches into a service to do its work.

Fork safety is one mechanism: an object that holds per-process state (threads, locks, pooled
connections, a client) calls :func:`track_fork` once, and its ``after_fork()`` runs in every forked
child, at the fork, from the one ``os.register_at_fork`` handler of this module. Whatever forks the
process (a Celery pool, ``multiprocessing``, ``os.fork()``), the child starts clean. An ``after_fork``
must be quick and do no I/O: it drops and resets, and the child reconnects on first use.

============================  =======================================  ======================================
hook                          called                                   for example
============================  =======================================  ======================================
``before_worker_boot()``      worker main process, before its pool     mark a relay as running in a forking
                              starts                                   process
``on_worker_start(queues)``   worker main process, once it consumes    start a relay or a dispatcher thread
``after_fork()``              every forked child, at the fork          drop clients and pools of the parent,
                              (:func:`track_fork`)                     new locks
``on_worker_shutdown()``      worker main process, at warm shutdown    stop the threads started above
``close()``                   any process, ``Foundation.close()``,     release connections, stop background
                              in reverse start-up order                threads, flush what is buffered
============================  =======================================  ======================================

A service's ``close()`` is its own release (the services' ``close`` methods are this hook); the
Foundation calls it on every service it built, the last built first, and a failing ``close`` is
logged while the others still run.

What a service uses comes in a :class:`ServiceContext`: the settings and lazy providers of the
deployment's shared parts (the Celery app, the event store, the job hooks, the breakers, the backend
factory, telemetry), which the Foundation builds once; a sibling service a service needs is one more
provider given to its constructor. A service never holds the Foundation, so it can be built, and
tested, from real backends without one.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._backends import InjectedBackends
    from .backends import Backends
    from .events._facade import Events
    from .hooks import JobHooks
    from .jobs._celery import EsfCelery
    from .resilience import Breakers
    from .settings import Settings
    from .telemetry import Telemetry

__all__ = ["HOOKS", "WORKER_HOOKS", "ForkAware", "ServiceContext", "ServiceLifecycle", "dispatch", "track_fork"]

log = logging.getLogger("esf")

#: The hooks the Foundation dispatches from worker signals, in the order a worker's life calls them.
WORKER_HOOKS = ("before_worker_boot", "on_worker_start", "on_worker_shutdown")
#: Every hook name.
HOOKS = (*WORKER_HOOKS, "after_fork", "close")


class ServiceLifecycle:
    """No-op lifecycle hooks; a service overrides those it needs. Each runs once per process step."""

    def before_worker_boot(self) -> None:
        """In a worker's main process, before it forks its pool: this process will fork at any time."""

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        """In a worker's main process, once it consumes ``queues``."""

    def after_fork(self) -> None:
        """In a forked child, at the fork (once :func:`track_fork` was called): drop what belongs to the parent."""

    def on_worker_shutdown(self) -> None:
        """In a worker's main process, at shutdown: stop what ``on_worker_start`` started."""

    def close(self) -> None:
        """When the Foundation closes (in any process), after the worker hooks: release what the service holds."""


def dispatch(services: Iterable[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every service that implements it, in order; a failing hook is logged, the others run.

    Raises:
        ValueError: ``hook`` is not one of :data:`HOOKS`.
    """
    if hook not in HOOKS:
        raise ValueError(f"unknown lifecycle hook {hook!r}; expected one of {', '.join(HOOKS)}")
    for service in services:
        method = getattr(service, hook, None)
        if not callable(method):
            continue
        try:
            method(*args)
        except Exception:
            log.exception("lifecycle hook %s.%s failed; continuing", type(service).__name__, hook)


@dataclass(frozen=True)
class ServiceContext:
    """What a service gets from the deployment: the settings, and providers called on first use.

    A provider builds its part the first time it is called (the Foundation's build-on-first-use),
    so a service that never sends a job never opens the broker.

    Attributes:
        settings: the deployment's settings.
        injected: backends given to the deployment instead of built from the settings.
        celery: the Celery app.
        events: the event store (``fnd.events``).
        backends: the factory of coordination, schedule and gather stores (:mod:`esf.backends`).
        breakers: every named circuit breaker.
        telemetry: metrics; called only when ``settings.telemetry.enabled``.
        run_hooks: runs a job hook (``run_hooks("before_enqueue", ctx)``); only HookError propagates.
        add_hooks: registers job hooks (after those already registered).
    """

    settings: Settings
    injected: InjectedBackends
    celery: Callable[[], EsfCelery]
    events: Callable[[], Events]
    backends: Callable[[], Backends]
    breakers: Callable[[], Breakers]
    telemetry: Callable[[], Telemetry]
    run_hooks: Callable[..., None]
    add_hooks: Callable[[JobHooks], None]


class ForkAware(Protocol):
    def after_fork(self) -> None: ...


_TRACKED: weakref.WeakSet[Any] = weakref.WeakSet()


def track_fork(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every child forked from now on, while ``obj`` is alive (idempotent)."""
    _TRACKED.add(obj)


def _after_fork_in_child() -> None:
    dispatch(list(_TRACKED), "after_fork")


os.register_at_fork(after_in_child=_after_fork_in_child)
