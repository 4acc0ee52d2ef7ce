"""The Foundation: the composition root that owns the Celery app and every service."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, overload

from ._worker_runtime import WorkerRuntime
from .errors import HookError
from .events._model import Event
from .hooks import JobHooks
from .settings import Settings

if TYPE_CHECKING:
    import redis
    from celery.canvas import Signature

    from .backends import Backends
    from .cache import TwoTierCache
    from .cache._bindings import EventInvalidator
    from .config import ConfigService, ConfigStore
    from .events import EventRecorder, EventStore
    from .events._async import AsyncAppend, AsyncAppender
    from .events._facade import Events
    from .flags import FlagService
    from .jobs import Gather, Job, JobService, Workflow
    from .jobs._celery import EsfCelery
    from .jobs._coord import Coordinator
    from .jobs._schedules import ScheduleStore
    from .jobs._task import EsfTask
    from .resilience import Breakers, BreakerState, Guard
    from .sagas import Saga, SagaService
    from .secrets import SecretsService
    from .services import ServiceRegistry
    from .sourcing import AggregateRepository, UpcasterFn, Upcasters
    from .subscriptions import Subscription, SubscriptionService
    from .telemetry import Telemetry
    from .telemetry._store import SnapshotStore

log = logging.getLogger("esf")

F = TypeVar("F", bound=Callable[..., Any])
_S = TypeVar("_S", bound="Saga")

_instances: weakref.WeakSet[Foundation] = weakref.WeakSet()

#: Services a Foundation creates on first use, in start-up order.
SERVICES = ("events", "config", "cache", "telemetry", "flags", "secrets", "sagas")
#: Services whose lifecycle hooks (esf.lifecycle) the Foundation calls, in start-up order.
LIFECYCLE_ORDER = (*SERVICES, "jobs", "subscriptions")


class Foundation:
    """One ESF deployment's services, built from :class:`~esf.Settings`.

    Parameters:
        settings: the settings; ``Settings()`` (embedded, no server) when omitted.
        hooks: job lifecycle hooks, run in order (``after_*`` in reverse).
        events, config_store, coordinator, schedule_store, snapshot_store: backend objects to use
            as they are (see :class:`~esf._backends.InjectedBackends`); each one not given is
            built from the settings on first use. The Foundation closes them when it closes.

    Raises:
        ValidationError: an injected backend lacks a method of its interface.
    """

    #: The class of ``self._runtime``, the worker-side life of this Foundation (see esf._worker_runtime).
    _runtime_class: ClassVar[type[WorkerRuntime]] = WorkerRuntime

    def __init__(self, settings: Settings | None = None, *, hooks: Sequence[JobHooks] = (),
                 events: EventRecorder | None = None, config_store: ConfigStore | None = None,
                 coordinator: Coordinator | None = None, schedule_store: ScheduleStore | None = None,
                 snapshot_store: SnapshotStore | None = None) -> None:
        from ._backends import InjectedBackends

        #: The backends given to the constructor (``None``: built from the settings).
        self.injected = InjectedBackends(events=events, config_store=config_store, coordinator=coordinator,
                                         schedule_store=schedule_store, snapshot_store=snapshot_store)
        self.settings = settings or Settings()
        self._hooks: list[JobHooks] = list(hooks)
        self._hook_plans: dict[str, tuple[JobHooks, ...]] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _instances.add(self)
        from .lifecycle import ServiceContext, track_fork

        #: What a worker process does with this Foundation (Celery signals, ``esf worker``).
        self._runtime = self._runtime_class(self)
        track_fork(self._runtime)
        #: What the services use (esf.lifecycle.ServiceContext): the settings and lazy providers.
        self._context = ServiceContext(
            settings=self.settings, injected=self.injected, celery=lambda: self.celery, events=lambda: self.events,
            backends=lambda: self.backends, breakers=lambda: self.breakers, telemetry=lambda: self.telemetry,
            run_hooks=self.run_hooks, add_hooks=self.add_hooks)
        from .events import JobHistoryHooks

        #: Buffered, batched writer of events nobody waits for (job history, audit events).
        self._event_writer = JobHistoryHooks(cast("EventStore", _DeferredEvents(self)),
                                             flush_interval_s=self.settings.events.history_flush_s)
        if self.settings.events.record_job_events:
            self._hooks.append(self._event_writer)
        if self.settings.telemetry.enabled:
            from .telemetry import TelemetryHooks

            self._hooks.append(TelemetryHooks(lambda: self.telemetry))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Foundation:
        """A Foundation from ``ESF_*`` variables and ``ESF_SETTINGS`` (see :class:`~esf.Settings`)."""
        return cls(Settings.from_env(environ))

    @staticmethod
    def instances() -> list[Foundation]:
        """Every live Foundation of this process."""
        return list(_instances)

    def __repr__(self) -> str:
        return f"<Foundation broker={self.settings.broker_kind} node={self.settings.node}>"

    # -- jobs ----------------------------------------------------------------

    @cached_property
    def celery(self) -> EsfCelery:
        """The Celery app (JSON only, late acknowledgement, routed queues with DLQs)."""
        from esf.workers import signals

        from .jobs._celery import create_celery_app

        signals.connect()
        app = create_celery_app(self.settings)
        app.foundation = self
        return app

    @cached_property
    def jobs(self) -> JobService:
        """Declared jobs, their status, and the dead-letter queues (``fnd.jobs.dlq``)."""
        from esf.tasks import register

        from .jobs import JobService

        service = JobService(self._context, bind_task=self._bind_task)
        self.__dict__["jobs"] = service
        register(self)
        return service

    def _bind_task(self, task: EsfTask) -> None:
        """A declared job's task reaches this Foundation (``self.foundation`` in a task body, the worker's run)."""
        task.foundation = self

    @cached_property
    def services(self) -> ServiceRegistry:
        """ESF's own service tasks (``esf.<service>.<verb>`` on ``esf.<service>``) and their default schedules."""
        from .services import ServiceRegistry

        registry = ServiceRegistry(self._context, jobs=lambda: self.jobs)
        self.__dict__["services"] = registry
        _ = self.jobs  # declares them (tasks/<service>.py) when the jobs service is built
        return registry

    @overload
    def job(self, fn: F, /) -> Job[Any, Any]: ...

    @overload
    def job(self, fn: None = None, /, **options: Any) -> Callable[[F], Job[Any, Any]]: ...

    def job(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Declare a job: ``@fnd.job`` or ``@fnd.job(name=, queue=, retries=, backoff=, max_backoff=,
        jitter=, retry_on=, timeout=, unique_for=, rate_limit=, rate_limit_key=, priority=, uses=)``.

        ``backoff`` is the first retry delay in seconds; each retry doubles it up to
        ``max_backoff``; ``jitter`` picks a delay between half and all of it.
        ``retry_on`` lists the exceptions worth retrying; any other goes to the DLQ at once.
        ``timeout`` is the soft time limit in seconds (the hard limit adds ``jobs.hard_timeout_grace_s``).
        ``unique_for`` drops a repeated enqueue of the same arguments (or idempotency key) for that
        many seconds. ``rate_limit`` (``"10/s"``) is global across workers and hosts, optionally per
        ``rate_limit_key`` (a keyword argument name, or a function of ``(args, kwargs)``).
        ``uses`` names the breakers (:meth:`breaker`) of the downstreams the job calls: while one is
        open the job is deferred (re-enqueued with a delay, same id, no retry spent) instead of run.

        Raises:
            ValidationError: an option is invalid (every bad option is named).
        """
        if fn is not None:
            return self.jobs.declare(fn)

        def decorator(f: Callable[..., Any]) -> Job[Any, Any]:
            return self.jobs.declare(f, **options)

        return decorator

    def schedule(self, name: str | None = None, *, cron: str | None = None,
                 every: float | timedelta | None = None, args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None,
                 queue: str | None = None) -> Callable[[Callable[..., Any]], Job[Any, Any]]:
        """Declare a schedule of the decorated job, run by ``esf beat``: ``@fnd.schedule(cron="*/5 * * * *")``
        or ``@fnd.schedule(every=60)`` (UTC). A plain function is declared as a job first (on ``queue``).
        The schedule is written to the schedule store when beat starts.

        Raises:
            ValidationError: a malformed cron, an interval not > 0, or non-JSON arguments.
            UnknownQueue: ``queue`` is not configured.
        """
        from .jobs._schedules import schedule_decorator

        return schedule_decorator(self, name, cron=cron, every=every, args=args, kwargs=kwargs, queue=queue)

    def chain(self, *steps: Signature, correlation_id: str | None = None) -> Workflow:
        """Run ``steps`` one after the other, each getting the previous result."""
        from celery import chain

        return self.jobs.run_workflow(chain(*steps), correlation_id=correlation_id)

    def group(self, *steps: Signature, correlation_id: str | None = None) -> Workflow:
        """Run ``steps`` in parallel; ``wait()`` returns their results as a list."""
        from celery import group

        return self.jobs.run_workflow(group(*steps), correlation_id=correlation_id)

    def chord(self, header: Sequence[Signature], body: Signature, *, correlation_id: str | None = None) -> Workflow:
        """Run ``header`` in parallel, then ``body`` with the list of their results."""
        from celery import chord

        return self.jobs.run_workflow(chord(list(header), body), correlation_id=correlation_id)

    def gather(self, calls: Sequence[Any], *, then: Job[Any, Any] | str, deadline: float | timedelta,
               min_results: int | None = None, on_timeout: Literal["continue", "fail"] = "fail",
               correlation_id: str | None = None) -> Gather:
        """Scatter-gather: send every job of ``calls``, gather their results, then run ``then`` once.

        ``then`` gets one argument, ``{"gather_id", "reason", "results", "arrived", "failed", "missing"}``:
        ``results`` in the order of ``calls`` (null where none arrived), ``reason`` ``complete`` (every job
        settled) or ``deadline``. The gather closes when every job has settled (succeeded, or failed for
        good) or at ``deadline``: with at least ``min_results`` results (all by default) and, at the deadline,
        ``on_timeout="continue"``, ``then`` is sent; otherwise it is dead-lettered on its queue's DLQ with
        reason ``gather_deadline`` or ``gather_min_results`` and the partial outcome as its argument. A result
        arriving after the gather closed is kept (``status()["late"]``) and ignored.

        Parameters:
            calls: ``job.s(*args, **kwargs)``, or ``(job, args)`` / ``(job, args, kwargs)`` (a job or its name).
            then: the callback job (or its name).
            deadline: seconds (or a timedelta) from now, > 0 and at most 30 days.
            min_results: results needed to run ``then``, 1 to ``len(calls)``.
            on_timeout: at the deadline, ``"continue"`` with the results so far, or ``"fail"``.
            correlation_id: carried by every job of the gather and its callback.

        Raises:
            ValidationError: a bad call, deadline, ``min_results`` or ``on_timeout``; ``SerializationError``
                for arguments that are not JSON (``details["item"]`` is the call's index). Nothing is sent.
            UnknownQueue: a job's queue is not configured.
            ServiceUnavailable: the gather store or the broker cannot be reached.

        Returns:
            a :class:`~esf.jobs.Gather` handle (``wait()``, ``status()``).
        """
        return self.jobs.gathers.start(calls, then=then, deadline=deadline, min_results=min_results,
                                       on_timeout=on_timeout, correlation_id=correlation_id)

    # -- events ----------------------------------------------------------------

    @cached_property
    def events(self) -> Events:
        """The event store (PostgreSQL, or SQLite under ``data_dir``; the injected one if given); created on
        first use.

        ``fnd.events.subscribe(name, handler, filter=…)`` declares a subscription.
        """
        from .events import create_event_store
        from .events._facade import FoundationEvents

        injected = self.injected.events
        store = create_event_store(self.settings) if injected is None else cast("EventStore", injected)
        self._watch_breaker(store)
        store = self._upcasting(store)
        if self.settings.telemetry.enabled:
            from .events._instrumented import InstrumentedEventStore

            store = cast("EventStore", InstrumentedEventStore(store, lambda: self.telemetry.instruments))
        return cast("Events", FoundationEvents(store, lambda: self.subscriptions))

    def append_async(self, events: Event | Sequence[Event]) -> AsyncAppend:
        """Append events through the ``esf.events`` queue; returns a handle with ``wait(timeout)``.

        The events are validated here, before anything is sent; a worker writes the
        batch in one transaction, with the retries and DLQ of any job.
        """
        return self._appender.append_async(events)

    @cached_property
    def _appender(self) -> AsyncAppender:
        from .events._async import APPEND_JOB, AsyncAppender

        job = self.jobs.get(APPEND_JOB)
        return AsyncAppender(self.events, lambda items: job.enqueue_with([items]),
                             max_events_bytes=self.settings.events.max_event_bytes)

    def record(self, event: Event) -> None:
        """Append ``event`` in the background: never blocks on the database, batched, spooled when it is down.

        Raises:
            ValidationError: the event is invalid (checked here, before it is queued).
        """
        from .events._validation import prepare_events

        prepare_events(event, max_event_bytes=self.settings.events.max_event_bytes)
        self._event_writer.append_later(event)

    # -- subscriptions ---------------------------------------------------------------

    @cached_property
    def subscriptions(self) -> SubscriptionService:
        """Durable event subscriptions and projections; handlers run as routed jobs."""
        from .subscriptions import SubscriptionService

        return SubscriptionService(self._context, jobs=lambda: self.jobs, upcasters=lambda: self.upcasters)

    def subscription(self, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Subscription]:
        """Declare a subscription: ``@fnd.subscription("receipts", filter=Q.type("order.paid"))`` on a
        ``handler(event)``. Options as :meth:`SubscriptionService.subscribe`; the name defaults to the
        function's. Raises ValidationError for bad options."""
        return self.subscriptions.decorator(name, **options)

    def projection(self, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Subscription]:
        """Declare a projection: a subscription whose ``handler(event, session)`` writes through a
        SQLAlchemy session committed together with its checkpoint (each event takes effect once)."""
        return self.subscriptions.decorator(name, projection=True, **options)

    # -- sagas -----------------------------------------------------------------------

    @cached_property
    def sagas(self) -> SagaService:
        """Sagas (process managers): instances in the database, steps as jobs, transitions as events."""
        from .sagas import SagaService

        return SagaService(self._context, jobs=lambda: self.jobs, subscriptions=lambda: self.subscriptions)

    def saga(self, cls: type[_S]) -> type[_S]:
        """Declare a saga class (``@fnd.saga`` on a subclass of :class:`esf.sagas.Saga`); returns it.

        Raises:
            ValidationError: not a valid saga (every problem is named) or its name is taken.
        """
        self.sagas.declare(cls)
        return cls
    # -- event sourcing ------------------------------------------------------------

    def _upcasting(self, store: EventStore) -> EventStore:
        from .sourcing import UpcastingEventStore

        return cast("EventStore", UpcastingEventStore(store, self.upcasters))

    @cached_property
    def upcasters(self) -> Upcasters:
        """The upcaster registry: every read of ``fnd.events`` returns events in their current shape."""
        from .sourcing import Upcasters

        return Upcasters()

    def upcaster(self, event_type: str, *, from_version: int) -> Callable[[UpcasterFn], UpcasterFn]:
        """Register the decorated ``fn(data) -> data`` as the upcaster of ``event_type`` from ``from_version``.

        Raises:
            ValidationError: bad type or version, or versions registered out of order (see ``Upcasters.register``).
        """
        def decorator(fn: UpcasterFn) -> UpcasterFn:
            self.upcasters.register(event_type, from_version, fn)
            return fn

        return decorator

    @cached_property
    def aggregates(self) -> AggregateRepository:
        """The aggregate repository; snapshots go to the ``esf.events.snapshot`` job."""
        from .sourcing import SNAPSHOT_JOB, AggregateRepository

        def dispatch(payload: dict[str, Any]) -> None:
            self.jobs.get(SNAPSHOT_JOB).enqueue(payload)

        return AggregateRepository(self.events, dispatch)

    # -- configuration -------------------------------------------------------------

    @cached_property
    def config(self) -> ConfigService:
        """Configuration: one snapshot per process, atomic batches, history; audit events go to the store."""
        from .config import create_config_service
        from .events import Event

        def audit(payload: dict[str, Any]) -> None:
            self.record(Event(str(payload["type"]), payload, stream_id="config",
                              event_id=payload.get("event_id")))

        service = create_config_service(
            self.settings, audit=audit, store=self.injected.config_store,
            telemetry=(lambda: self.telemetry) if self.settings.telemetry.enabled else None)
        from .config._deferred import DeferredBatches

        service.deferred = DeferredBatches(service, events=lambda: self.events, jobs=lambda: self.jobs)

        def telemetry_changed(_change: Any) -> None:
            if "telemetry" in self.__dict__:
                self.telemetry.apply_config(service.get("telemetry", default={}))

        # ``secret://path#key`` values are resolved by the secrets service on read, never stored resolved.
        service.secret_resolver = lambda value: self.secrets.resolve_references(value)
        service.subscribe("telemetry", telemetry_changed)
        from .flags import FLAGS_PREFIX, SEGMENTS_PREFIX, validate_flags

        service.register_validator(validate_flags, prefixes=(FLAGS_PREFIX, SEGMENTS_PREFIX))
        if self.settings.telemetry.enabled:
            service.subscribe("", lambda change: self.telemetry.instruments.record_config_update(change.version))
        return service

    # -- feature flags -------------------------------------------------------------

    @cached_property
    def flags(self) -> FlagService:
        """Feature flags kept in the configuration (``flags.*``), evaluated in this process."""
        from .flags import FlagService

        return FlagService(lambda: self.config, settings=self.settings.flags,
                           telemetry=(lambda: self.telemetry) if self.settings.telemetry.enabled else None,
                           record=self.record)

    # -- telemetry ---------------------------------------------------------------

    @cached_property
    def telemetry(self) -> Telemetry:
        """Metrics, events and exporters; figures add up across processes and hosts."""
        from .telemetry import create_telemetry

        return create_telemetry(self.settings, store=self.injected.snapshot_store)

    # -- secrets -------------------------------------------------------------------

    @cached_property
    def secrets(self) -> SecretsService:
        """Secrets (environment, file or Vault): cached reads, leases, rotation notices; events never hold values."""
        from .events import Event
        from .secrets import create_secrets_service

        def emit(kind: str, payload: dict[str, Any]) -> None:
            self.record(Event(kind, payload, stream_id="secrets"))

        telemetry = (lambda: self.telemetry) if self.settings.telemetry.enabled else None
        service = create_secrets_service(self.settings, emit=emit, telemetry=telemetry)
        self._watch_breaker(service)
        return service
    # -- cache -------------------------------------------------------------------

    @cached_property
    def cache(self) -> TwoTierCache:
        """The cache: an in-process tier in front of Redis (the in-process tier alone without Redis)."""
        from .cache import create_foundation_cache

        cache = create_foundation_cache(self._context, jobs=lambda: self.jobs, config=lambda: self.config,
                                        watch_events=self._invalidate_on_events)
        self._watch_breaker(cache)
        return cache

    def _invalidate_on_events(self, invalidator: EventInvalidator) -> None:
        """Put the cache's ``invalidator`` in front of ``fnd.events`` (once), built or not yet."""
        from .cache._bindings import InvalidatingEventStore

        current = self.__dict__.get("events")
        if isinstance(current, InvalidatingEventStore):
            return
        if current is not None:
            wrapped = InvalidatingEventStore(lambda: current, invalidator)
        else:
            # Opened on first use, as ``fnd.events`` is.
            build = cast(Any, type(self).__dict__["events"]).func
            wrapped = InvalidatingEventStore(lambda: build(self), invalidator)
        self.__dict__["events"] = wrapped

    def cached(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Cache a function's results: ``@fnd.cached`` or ``@fnd.cached(ttl=, key=, namespace=, refresh_after=,
        stale_on_error=)`` (see :meth:`esf.cache.TwoTierCache.cached`)."""
        return self.cache.cached(fn, **options)

    # -- hooks -----------------------------------------------------------------

    def add_hooks(self, hooks: JobHooks) -> None:
        """Register lifecycle hooks (after those already registered)."""
        self._hooks.append(hooks)
        self._hook_plans.clear()

    @property
    def hooks(self) -> tuple[JobHooks, ...]:
        return tuple(self._hooks)

    def run_hooks(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Run hook ``name`` on every registered hook object; only HookError propagates."""
        plan = self._hook_plans.get(name)
        if plan is None:
            plan = self._hook_plan(name)
        for hooks in plan:
            try:
                getattr(hooks, name)(*args, **kwargs)
            except HookError:
                raise
            except Exception:
                log.exception("hook %s.%s failed; continuing", type(hooks).__name__, name)

    def _hook_plan(self, name: str) -> tuple[JobHooks, ...]:
        """The hook objects that implement ``name``, in call order (``before_*`` in order, ``after_*`` reversed).

        Hooks run in every job; objects whose ``name`` is JobHooks' own no-op are left out once, here.
        """
        ordered = self._hooks if name.startswith("before_") else list(reversed(self._hooks))
        base = getattr(JobHooks, name, None)
        plan = tuple(
            hooks for hooks in ordered
            if base is None or name in getattr(hooks, "__dict__", {}) or getattr(type(hooks), name, base) is not base
        )
        self._hook_plans[name] = plan
        return plan

    # -- backends and shared clients ---------------------------------------------

    @cached_property
    def backends(self) -> Backends:
        """The factory of this deployment's backends (:func:`esf.backends.backends_for`): Redis when a Redis URL
        is configured, else SQLite under ``data_dir``. The Redis one shares :attr:`redis`."""
        from .backends import backends_for

        return backends_for(self.settings, redis_client=lambda: self.redis)

    @property
    def redis(self) -> redis.Redis[bytes]:
        """The Redis client for coordination (locks, rate limits, delivery counters); one per process."""
        client = self.__dict__.get("_redis")
        if client is None:  # a forked child starts without one (after_fork)
            from .backends import open_client

            client = open_client(self.settings)
            self.__dict__["_redis"] = client
        return client

    # -- breakers ------------------------------------------------------------------

    @cached_property
    def breakers(self) -> Breakers:
        """Every named circuit breaker: user downstreams (:meth:`breaker`) and ESF's own services'.

        Breakers are shared by every process through Redis when one is configured
        (``resilience.breaker_store``), else each process has its own.
        """
        from .resilience import Breakers, RateLimitedEvents, RedisSharedState

        rs = self.settings.resilience
        shared = None
        if rs.breaker_store == "redis" or (rs.breaker_store == "auto" and self.backends.name == "redis"):
            shared = RedisSharedState(lambda: self.redis, rs.breaker_key_prefix)
        events = RateLimitedEvents(self._record_breaker_event, rs.breaker_event_interval_s)

        def changed(name: str, state: BreakerState) -> None:
            if state == "open":
                log.warning("circuit breaker %s opened", name)
            elif state == "closed":
                log.info("circuit breaker %s closed", name)
            if self.settings.telemetry.enabled and "telemetry" in self.__dict__:
                try:
                    self.telemetry.instruments.record_breaker_state(name, state)
                except Exception:
                    log.debug("breaker %s: could not record its state", name, exc_info=True)
            if state != "half_open":
                events(name, state)

        return Breakers(failure_threshold=rs.breaker_failures, reset_timeout_s=rs.breaker_reset_s,
                        max_reset_timeout_s=rs.breaker_max_reset_s, shared=shared, on_state_change=changed)

    def breaker(self, name: str, *, failure_on: tuple[type[BaseException], ...] = (Exception,)) -> Guard:
        """Guard calls to a downstream: ``with fnd.breaker("payments_api"): …`` or ``@fnd.breaker("payments_api")``.

        After ``resilience.breaker_failures`` consecutive failures (exceptions of ``failure_on``)
        the breaker opens on every process sharing it: entering raises
        :class:`~esf.errors.CircuitOpen` without running the block, and jobs declared with
        ``uses=[name]`` are deferred instead of started. After ``resilience.breaker_reset_s``
        one process makes a trial call; its success closes the breaker everywhere.

        Raises:
            ValidationError: ``name`` is not a valid breaker name.
        """
        return self.breakers.guard(name, failure_on)

    def _watch_breaker(self, service: object) -> None:
        """List a service's own breaker (health, state events)."""
        from .resilience import CircuitBreaker

        breaker = getattr(service, "breaker", None)
        if isinstance(breaker, CircuitBreaker):
            self.breakers.adopt(breaker)

    def _record_breaker_event(self, name: str, state: BreakerState) -> None:
        """A ``breaker.opened`` / ``breaker.closed`` event, through the background writer (never blocks)."""
        try:
            self.record(Event(f"breaker.{'opened' if state == 'open' else 'closed'}",
                              {"breaker": name, "node": self.settings.node, "pid": os.getpid()},
                              stream_id=f"breaker-{name}"))
        except Exception:
            log.debug("breaker %s: its state event could not be recorded", name, exc_info=True)

    # -- health ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded"|"down", "ready", "services": {name: {...}}}`` for every started service.

        Each service reports ``ok``, ``degraded`` with a ``reason`` (spool depth, stale configuration,
        breaker open, cache tier down, secret backend unreachable, a secret lease near expiry) or
        ``down``. ``ready`` is False only when a service of ``health.required`` is down. Cheap enough
        to be called every second: one broker connection check, the DLQ depths, and each started
        service's own report.
        """
        services: dict[str, dict[str, Any]] = {"broker": self._broker_health()}
        if services["broker"]["status"] == "ok":
            services["dlq"] = self._dlq_health()
        for name in SERVICES:
            service = self.__dict__.get(name)
            if service is not None and hasattr(service, "health"):
                try:
                    report = service.health()
                    services[name] = report.to_dict() if hasattr(report, "to_dict") else dict(report)
                except Exception as exc:
                    services[name] = {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
        if "secrets" in services:
            self._secret_expiry_health(services["secrets"])
        if "subscriptions" in self.__dict__ and self.subscriptions.declared():
            services["subscriptions"] = self._subscription_health()
        if "breakers" in self.__dict__ and self.breakers.names():
            services["breakers"] = self.breakers.health()
        for item in services.values():
            if item.get("status") == "degraded" and "reason" not in item:
                item["reason"] = _degraded_reason(item)
        states = {s.get("status") for s in services.values()}
        status = "down" if "down" in states else "degraded" if "degraded" in states else "ok"
        required = self.settings.health.required
        not_ready = sorted(n for n in required if services.get(n, {}).get("status") == "down")
        overall: dict[str, Any] = {"status": status, "ready": not not_ready, "node": self.settings.node,
                                   "pid": os.getpid(), "services": services}
        if not_ready:
            overall["not_ready"] = not_ready
        return overall

    def _secret_expiry_health(self, report: dict[str, Any]) -> None:
        """Degrade the secrets report when a held lease, or the backend's token, ends within
        ``health.secret_expiry_warn_s``."""
        try:
            leases = self.secrets.leases.describe()
            token_left = self.secrets.token_expires_in()
        except Exception:
            return
        warn = self.settings.health.secret_expiry_warn_s
        near = [f"{lease['path']} in {lease['expires_in_s']:g} s" for lease in leases
                if lease["expires_in_s"] < warn]
        if token_left is not None and token_left < warn:
            near.append(f"auth/token in {token_left:g} s")
        if near:
            report["status"] = "down" if report.get("status") == "down" else "degraded"
            reason = "secret near expiry: " + ", ".join(near)
            report["reason"] = f"{report['reason']}; {reason}" if report.get("reason") else reason

    def _subscription_health(self) -> dict[str, Any]:
        """Lag of the subscriptions declared in this process: degraded above ``health.subscription_lag_s``."""
        try:
            rows = [self.subscriptions.status(sub.name) for sub in self.subscriptions.declared()]
        except Exception as exc:
            return {"status": "degraded", "reason": f"subscription state unreadable ({type(exc).__name__})"}
        limit = self.settings.health.subscription_lag_s
        lag = {r.name: {"lag_events": r.lag_events, "lag_seconds": r.lag_seconds, "paused": r.paused} for r in rows}
        behind = [f"{r.name} {r.lag_seconds:.0f} s behind" for r in rows if r.lag_seconds > limit]
        stopped = [f"{r.name} stopped ({r.stopped_reason})" for r in rows if r.stopped_reason]
        report: dict[str, Any] = {"status": "degraded" if behind or stopped else "ok", "subscriptions": lag}
        if behind or stopped:
            report["reason"] = "subscription lag: " + ", ".join(behind + stopped)
        return report

    def _dlq_health(self) -> dict[str, Any]:
        """Dead letters per queue (also exported as the ``esf.dlq.depth`` gauge)."""
        try:
            depth = self.jobs.dlq.depth()
        except Exception as exc:
            return {"status": "degraded", "error": type(exc).__name__}
        if self.settings.telemetry.enabled:
            for queue, n in depth.items():
                self.telemetry.instruments.set_dlq_depth(queue, n)
        return {"status": "ok", "depth": depth, "total": sum(depth.values())}

    def _broker_health(self) -> dict[str, Any]:
        try:
            conn = self.celery.connection_for_write()
            try:
                conn.ensure_connection(max_retries=1, timeout=self.settings.resilience.broker_connect_timeout_s)
            finally:
                conn.release()
        except Exception as exc:
            return {"status": "down", "kind": self.settings.broker_kind, "error": type(exc).__name__}
        return {"status": "ok", "kind": self.settings.broker_kind}

    # -- lifecycle ---------------------------------------------------------------

    def _started_services(self) -> list[Any]:
        """The services of :data:`LIFECYCLE_ORDER` built so far, in start-up order."""
        return [self.__dict__[name] for name in LIFECYCLE_ORDER if name in self.__dict__]

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Hand every buffered event (job history, :meth:`record`) to the event store.

        Returns False when ``timeout`` seconds passed first. ``close`` flushes too.
        """
        return self._event_writer.flush(timeout)

    def close(self) -> None:
        """Release connections and stop background threads.

        The worker hooks stop first (``on_worker_shutdown``), then the job hooks flush what they
        buffered (job history, audit events) while every service is still open, then each service
        built releases its own through its ``close`` hook (:mod:`esf.lifecycle`), the last built
        first; a failing ``close`` is logged and the others still run.
        """
        from .lifecycle import dispatch

        self._runtime.stopped()
        client = self.__dict__.pop("_redis", None)
        if client is not None:
            client.close()
        for hooks in self._hooks:
            closer = getattr(hooks, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:
                    log.exception("closing hooks %s failed", type(hooks).__name__)
        dispatch(reversed(self._started_services()), "close")
        for name in SERVICES:
            # Closed: built anew if used again.
            self.__dict__.pop(name, None)
        app = self.__dict__.get("celery")
        if app is not None:
            app.close()

    def __enter__(self) -> Foundation:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _degraded_reason(item: Mapping[str, Any]) -> str:
    """A reason for a degraded report that gave none, from its usual fields."""
    reasons = []
    if item.get("spool_depth"):
        reasons.append(f"spool depth {item['spool_depth']}")
    if item.get("breaker") not in (None, "closed"):
        reasons.append(f"breaker {item['breaker']}")
    if item.get("error"):
        reasons.append(str(item["error"]))
    if item.get("reasons"):
        reasons.extend(str(r) for r in item["reasons"])
    return "; ".join(reasons) or "degraded"


class _DeferredEvents:
    """Stands for ``foundation.events`` until first used, so hooks do not open the database early."""

    def __init__(self, foundation: Foundation) -> None:
        self._foundation = foundation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._foundation.events, name)
