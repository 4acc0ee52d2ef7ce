"""WorkerRuntime: what a worker process does with its Foundation at each step of its life.

The Celery signals connected in ``workers/signals.py`` and ``esf worker`` reach a Foundation through
``fnd._runtime``, never through the Foundation's public surface (which is what an application uses:
jobs, schedules, workflows, the services, ``health``, ``close``). The runtime holds what only a
worker owns (the Redis job lease keeper) and calls each built service's lifecycle hooks
(:mod:`esf.lifecycle`): it never does a service's work itself.

==============================  =====================================  ==========================================
method                          called from                            does
==============================  =====================================  ==========================================
``check_broker()``              ``esf worker``, before Celery starts   the Redis broker's durability and the
                                                                       Celery internals the job lease relies on
``boot()``                      ``worker_init``, before the pool       preload lazily imported backends, forward
                                                                       this process's events as jobs,
                                                                       ``before_worker_boot``
``started(queues)``             ``worker_ready``                       the job lease keeper, ``on_worker_start``
``stopped()``                   ``worker_shutdown``, ``close()``       ``on_worker_shutdown`` (in reverse), the lease
``pool_process_started()``      ``worker_process_init``                open the event store before the first job
``after_fork()``                every forked child, at the fork        drop the Foundation's client and configuration
==============================  =====================================  ==========================================
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, cast

from .events._model import Event

if TYPE_CHECKING:
    from .events import EventStore
    from .foundation import Foundation

__all__ = ["WorkerRuntime"]

log = logging.getLogger("esf")


class WorkerRuntime:
    """The worker-side life of one Foundation (``fnd._runtime``); see the module's table."""

    def __init__(self, foundation: Foundation) -> None:
        self._fnd = foundation
        self._lease: Any = None

    def check_broker(self) -> list[str]:
        """Start-up checks of the broker; returns the problems found (warned or raised per settings).

        Raises:
            MissingDependency: on a Redis broker, the installed Celery or kombu lacks an internal the job
                lease relies on (the worker must not run without it).
            SettingsError: the Redis broker is not durable and ``jobs.redis_durability_check`` is ``error``.
            ServiceUnavailable: ``jobs.redis_durability_check`` is ``error`` and the Redis broker does not
                answer (a worker checks again once it has connected, see ``esf.workers``).
        """
        settings = self._fnd.settings
        if settings.broker_kind != "redis":
            return []
        import redis as _redis

        from .jobs._checks import check_lease_internals, check_redis_broker

        check_lease_internals()

        assert settings.broker_url is not None
        client = _redis.Redis.from_url(settings.broker_url,
                                       socket_connect_timeout=settings.resilience.redis_connect_timeout_s,
                                       socket_timeout=settings.resilience.redis_timeout_s)
        try:
            return check_redis_broker(client, settings.jobs.redis_durability_check)
        finally:
            client.close()

    def boot(self) -> None:
        """Import every backend the services load lazily, in the calling thread, then ``before_worker_boot``.

        A worker's main process forks pool processes at any time (a hard time limit replaces a
        killed one); a fork while a background thread is half-way through importing a module
        leaves that module broken in the child. The worker calls this before its pool starts.
        """
        import importlib

        from .events import _backend_class

        fnd = self._fnd
        backend = _backend_class()
        preload_backend = getattr(backend, "preload", None)
        if callable(preload_backend):
            try:
                preload_backend(fnd.settings.effective_database_url)
            except Exception:
                log.debug("preload: the event store backend could not preload", exc_info=True)
        # This process forks pool processes: it must not hold SQLite connections of its own,
        # so the events it records (a hard time limit's dead letter) travel as an append job.
        fnd._event_writer.store = cast("EventStore", _ForwardedEvents(fnd))
        _ = fnd.jobs
        self.dispatch("before_worker_boot")
        for name in ("esf.telemetry", "esf.config", "esf.jobs._schedules"):
            try:
                importlib.import_module(name)
            except ImportError:
                log.debug("preload: %s not importable", name)
        from importlib.metadata import entry_points

        for ep in entry_points(group="esf.plugins"):
            try:
                ep.load()
            except Exception:
                log.warning("plugin %s could not be loaded", ep.name, exc_info=True)

    def started(self, queues: tuple[str, ...] = ()) -> None:
        """In a worker's main process once it consumes: job leases and a consumer watch on Redis,
        then each service's ``on_worker_start`` (the outbox relay, the subscription dispatcher)."""
        fnd = self._fnd
        _ = fnd.jobs
        if fnd.settings.broker_kind == "redis" and self._lease is None:
            import signal

            from esf.workers._lease import LeaseKeeper

            assert fnd.settings.broker_url is not None
            jobs = fnd.settings.jobs
            self._lease = LeaseKeeper(
                fnd.settings.broker_url, jobs.visibility_timeout_s, queues=queues,
                stall_after_s=jobs.stalled_consumer_restart_s,
                on_stall=lambda: os.kill(os.getpid(), signal.SIGHUP),
            )
            self._lease.start()
        self.dispatch("on_worker_start", queues)

    def stopped(self) -> None:
        """When the worker shuts down: each service's ``on_worker_shutdown`` (in reverse), then the lease."""
        self.dispatch("on_worker_shutdown")
        if self._lease is not None:
            self._lease.stop()
            self._lease = None

    def pool_process_started(self) -> None:
        """In a new worker pool process, before its first job (Celery's ``worker_process_init``)."""
        fnd = self._fnd
        if fnd.settings.events.record_job_events:
            # Open the event store now, before this pool process takes jobs, rather than on the
            # first job's history (engine, schema check: 0.1-0.3 s of one job otherwise).
            try:
                _ = fnd.events
            except Exception as exc:
                log.warning("event store not ready in a new pool process (%s: %s); it will be retried on first use",
                            type(exc).__name__, exc)

    def after_fork(self) -> None:
        """In a forked child, at the fork (``esf.lifecycle.track_fork``): drop what belongs to the parent.

        The services drop their own (each tracks itself); this drops the Foundation's client and
        the configuration service, whose threads and heartbeat belong to the parent (rebuilt lazily).
        """
        from .foundation import _DeferredEvents

        fnd = self._fnd
        # A pool process writes its own events (the main process forwards them as jobs).
        fnd._event_writer.store = cast("EventStore", _DeferredEvents(fnd))
        fnd.__dict__.pop("_redis", None)
        # The configuration service's threads and heartbeat belong to the parent: rebuild it lazily.
        fnd.__dict__.pop("config", None)

    def dispatch(self, hook: str, *args: Any) -> None:
        """Call the worker hook ``hook`` (see :mod:`esf.lifecycle`) on every service built so far: in start-up
        order, and in reverse for ``on_worker_shutdown``."""
        from .lifecycle import dispatch

        started = self._fnd._started_services()
        dispatch(reversed(started) if hook == "on_worker_shutdown" else started, hook, *args)


class _ForwardedEvents:
    """The job-history writer's store in a worker's main process: events go out as append jobs."""

    def __init__(self, foundation: Foundation) -> None:
        self._foundation = foundation

    def append(self, events: Any, **_: Any) -> Any:
        # Straight to the broker: opening the database here would leave SQLite state for every
        # pool process forked afterwards (see esf._sqlite.fork_guard).
        from .events._async import APPEND_JOB, event_to_wire

        batch = [events] if isinstance(events, Event) else list(events)
        return self._foundation.jobs.get(APPEND_JOB).enqueue_with([[event_to_wire(e) for e in batch]])
