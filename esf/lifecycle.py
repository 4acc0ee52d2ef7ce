"""ServiceLifecycle: the hooks through which a process's life reaches each service that holds state across it.

A worker's main process boots, forks pool processes, consumes, and shuts down; each service that owns
threads, connections or per-process state across those steps implements the hooks it needs (dramatiq's
middleware ``before_worker_boot``/``after_process_boot``/``before_worker_shutdown``). One dispatcher, the
Foundation's, calls them from the Celery signals connected in ``workers/signals.py``: the Foundation
never reaches into a service to do it.

============================  =======================================  ======================================
hook                          called                                   for example
============================  =======================================  ======================================
``before_worker_boot()``      worker main process, before its pool     mark a relay as running in a forking
                              starts                                   process
``on_worker_start(queues)``   worker main process, once it consumes    start a relay or a dispatcher thread
``after_fork()``              each pool process, before its first job  drop clients and pools of the parent
``on_worker_shutdown()``      worker main process, at warm shutdown    stop the threads started above
============================  =======================================  ======================================
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["HOOKS", "ServiceLifecycle", "dispatch"]

log = logging.getLogger("esf")

#: The hook names, in the order a worker's life calls them.
HOOKS = ("before_worker_boot", "on_worker_start", "after_fork", "on_worker_shutdown")


class ServiceLifecycle:
    """No-op lifecycle hooks; a service overrides those it needs. Each runs once per process step."""

    def before_worker_boot(self) -> None:
        """In a worker's main process, before it forks its pool: this process will fork at any time."""

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        """In a worker's main process, once it consumes ``queues``."""

    def after_fork(self) -> None:
        """In a new pool process, before its first job: drop what belongs to the parent."""

    def on_worker_shutdown(self) -> None:
        """In a worker's main process, at shutdown: stop what ``on_worker_start`` started."""


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
