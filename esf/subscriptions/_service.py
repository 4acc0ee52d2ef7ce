"""The subscription service: declarations, the handler jobs' work, and the operator's verbs."""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import CircuitOpen, ServiceUnavailable, UnknownSubscription, ValidationError
from ..events._model import StoredEvent
from ..hooks import JobHooks
from ..jobs._outbox import JOB_KIND
from ..lifecycle import ServiceLifecycle
from ._model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    HANDLER_JOB_PREFIX,
    Subscription,
    SubscriptionStatus,
    check_options,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events._query import Filter
    from ..jobs import DeadLetter, JobService
    from ..lifecycle import ServiceContext
    from ..sourcing import Upcasters
    from . import SubscriptionBackend, TickResult
    from ._dispatcher import Dispatcher

log = logging.getLogger("esf.subscriptions")

#: Name of the subscription backend in the ``esf.plugins`` entry-point group.
ENTRY_POINT = "subscriptions.sqlalchemy"
#: The breaker a handler job uses for the event store: while its batch cannot be read or settled the job
#: is deferred (re-sent later, no retry spent) rather than failed.
STORE_BREAKER = "events.database"


def _backend_class() -> Any:
    from importlib.metadata import entry_points

    for ep in entry_points(group="esf.plugins"):
        if ep.name == ENTRY_POINT:
            return ep.load()
    from ..plugins.sqlalchemy_events import SqlSubscriptionBackend  # type: ignore[import-not-found,unused-ignore]

    return SqlSubscriptionBackend


class SubscriptionService(ServiceLifecycle):
    """Subscriptions and projections of one deployment (``fnd.subscriptions``).

    Handlers run as routed jobs named ``esf.subscription.<name>``; a dispatcher
    (in every worker's main process, see :meth:`start_dispatcher`) reads new
    matching events from each subscription's cursor and sends them in batches.

    Parameters:
        context: the settings, the event store, telemetry, and the job hooks (a dead-lettered batch
            reaches its subscription's ``on_dead_letter``).
        jobs: the jobs service the handler jobs are declared in and sent through.
        upcasters: the upcaster registry that events read for handlers go through.
    """

    def __init__(self, context: ServiceContext, *, jobs: Callable[[], JobService],
                 upcasters: Callable[[], Upcasters]) -> None:
        self.context = context
        self._jobs = jobs
        self._upcasters = upcasters
        self._subs: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._ensured: set[str] = set()
        self._dispatcher: Dispatcher | None = None
        context.add_hooks(_DeadLetterHooks(self))

    # -- declaring -----------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        filter: Filter | None = None,
        start: str | int = "beginning",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        partition_by: str | None = "stream_id",
        queue: str | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        timeout: float | None = None,
        on_dead_letter: str = "continue",
        projection: bool = False,
        tables: Sequence[Any] = (),
    ) -> Subscription:
        r"""Declare a durable subscription: ``handler(event)`` runs once per matching event, at least once.

        Declare it in the code that the workers import too (their dispatcher and
        handler jobs need it). Nothing is written until the dispatcher first runs:
        then a new subscription starts at ``start``; an existing one resumes at its
        checkpoint (``start`` is ignored).

        Parameters:
            name: unique name (``^[A-Za-z][A-Za-z0-9_.-]{0,99}$``).
            handler: called with each :class:`~esf.StoredEvent`, in position order within a
                partition; a projection's handler also gets a SQLAlchemy ``Session``.
            filter: an ``esf.Q`` filter evaluated by the database; ``None``: every event.
            start: ``"beginning"``, ``"now"`` or a position (delivery starts after it).
            batch_size: most events per handler job (1..1000).
            max_in_flight: most handler jobs sent and not finished (1..1000): backpressure.
            partition_by: ``"stream_id"`` (default), ``"correlation_id"`` or ``None``. Events of one
                key are handled one batch at a time, in order; keys run in parallel. ``None``
                handles everything in one strict order.
            queue: the handler jobs' queue (default: the ``esf.events`` service queue).
            retries, backoff, max_backoff, retry_on, timeout: the handler job's options
                (as :meth:`~esf.Foundation.job`); a batch that exhausts them is dead-lettered.
            on_dead_letter: ``"continue"`` (later events go on) or ``"pause"`` the subscription.
            projection: the handler gets a session in the transaction that records its batch
                as handled, so each event takes effect once in what it writes there.
            tables: a projection's read model: the names (or SQLAlchemy ``Table``\ s) of the tables
                its handler writes; :meth:`rebuild` replays into fresh copies of them and swaps them in.

        Returns:
            The :class:`Subscription`.

        Raises:
            ValidationError: an invalid option (every one is named), or the name is taken.
            UnknownQueue: ``queue`` is not configured.
        """
        table_names: Any = [getattr(t, "name", t) for t in tables] if isinstance(tables, (list, tuple)) else tables
        check_options(name=name, handler=handler, filter=filter, start=start, batch_size=batch_size,
                      max_in_flight=max_in_flight, partition_by=partition_by, on_dead_letter=on_dead_letter,
                      tables=table_names, projection=projection)
        if name in self._subs:
            raise ValidationError(f"a subscription named {name!r} is already declared", errors={"name": "duplicate"})
        settings = self.context.settings
        sub = Subscription(
            name=name, handler=handler, filter=filter, start=start, batch_size=batch_size,  # type: ignore[arg-type]
            max_in_flight=max_in_flight, partition_by=partition_by,
            queue=queue or settings.jobs.service_queue("events"), projection=projection,
            on_dead_letter=on_dead_letter,  # type: ignore[arg-type]
            tables=tuple(table_names),
        )
        from esf.tasks.subscriptions import declare_handler

        declare_handler(self._jobs(), self, sub, retries=retries, backoff=backoff, max_backoff=max_backoff,
                        retry_on=retry_on, timeout=timeout)
        self._subs[name] = sub
        return sub

    def decorator(self, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Subscription]:
        """``@fnd.subscription(...)`` / ``@fnd.projection(...)``: :meth:`subscribe` the decorated function."""

        def wrap(fn: Callable[..., Any]) -> Subscription:
            return self.subscribe(name or str(getattr(fn, "__name__", "")), fn, **options)

        return wrap

    def get(self, name: str) -> Subscription:
        """The declared subscription ``name``. Raises UnknownSubscription."""
        try:
            return self._subs[name]
        except (KeyError, TypeError):  # TypeError: a list or dict is no name either
            raise UnknownSubscription(f"no subscription named {name!a} is declared here "
                                      f"(declared: {', '.join(sorted(self._subs)) or 'none'})") from None

    def declared(self) -> builtins.list[Subscription]:
        """Every subscription declared in this process, by name."""
        return [self._subs[n] for n in sorted(self._subs)]

    # -- state ---------------------------------------------------------------------

    @cached_property
    def backend(self) -> SubscriptionBackend:
        """The subscription state in the event store's database.

        Raises:
            UnsupportedCapability: the event store backend is not a transactional store (checkpoints
                and projections commit in its database).
        """
        from ..events import TransactionalEventStore, require_capability

        store = self.context.events()
        require_capability(store, TransactionalEventStore, needed_for="subscriptions")
        store.head()  # migrated before the first use
        backend: SubscriptionBackend = _backend_class()(store.engine)  # type: ignore[attr-defined]
        return backend

    def _ensure(self, sub: Subscription) -> None:
        if sub.name in self._ensured:
            return
        if self.backend.ensure(sub.name, start=sub.start, spec=sub.describe()):
            log.info("subscription %s created at %s", sub.name, sub.start)
        self._ensured.add(sub.name)

    def _known(self, name: str) -> None:
        if name in self._subs:
            self._ensure(self._subs[name])
        elif self.backend.status(name) is None:
            raise UnknownSubscription(f"no subscription named {name!r}; list them with `esf subscriptions list`")

    def status(self, name: str) -> SubscriptionStatus:
        """Checkpoint, lag, batches in flight and dead batches of ``name``. Raises UnknownSubscription."""
        self._known(name)
        data = self.backend.status(name)
        if data is None:
            raise UnknownSubscription(f"no subscription named {name!r}")
        return SubscriptionStatus.from_backend(data, declared=name in self._subs)

    def list(self) -> builtins.list[SubscriptionStatus]:
        """Every subscription, declared here or stored, by name."""
        for sub in self._subs.values():
            self._ensure(sub)
        names = sorted(set(self.backend.names()) | set(self._subs))
        return [self.status(n) for n in names]

    def pause(self, name: str) -> None:
        """Send no new batch (batches already sent finish). Raises UnknownSubscription."""
        self._known(name)
        self.backend.pause(name)

    def resume(self, name: str) -> None:
        """Send batches again (also after a pause caused by a dead letter). Raises UnknownSubscription."""
        self._known(name)
        self.backend.resume(name)

    def reset(self, name: str, *, to: int | None = None, to_time: datetime | None = None) -> int:
        """Deliver again from just after ``to`` (a position) or from the first event recorded at ``to_time``.

        Returns:
            The new checkpoint.

        Raises:
            ValidationError: neither or both of ``to`` and ``to_time``, a negative position,
                or a naive datetime.
            UnknownSubscription: no such subscription.
        """
        if (to is None) == (to_time is None):
            raise ValidationError("reset: give exactly one of a position (to) or a time (to_time)")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool) or to < 0):
            raise ValidationError(f"reset: the position must be an integer >= 0, got {to!r}")
        if to_time is not None and (not isinstance(to_time, datetime) or to_time.tzinfo is None):
            raise ValidationError("reset: the time must be a timezone-aware datetime")
        self._known(name)
        position = to if to is not None else self.backend.position_at(to_time)  # type: ignore[arg-type]
        self.backend.reset(name, position)
        return position

    def delete(self, name: str) -> None:
        """Forget the stored state of ``name`` (a declared subscription starts again at its ``start``).

        Raises:
            UnknownSubscription: nothing is stored under ``name``.
        """
        if not self.backend.delete(name):
            raise UnknownSubscription(f"no subscription named {name!r}")
        self._ensured.discard(name)

    # -- dispatching ------------------------------------------------------------------

    def tick(self, name: str) -> TickResult:
        """One dispatch step of ``name``: read new matching events into batches, send those that may go.

        The handler jobs are written to the outbox in the same transaction; the caller
        relays them (:meth:`dispatch` does). Raises UnknownSubscription.
        """
        return self._tick(name, None)

    def _tick(self, name: str, publish: Callable[[dict[str, Any]], None] | None) -> TickResult:
        sub = self.get(name)
        self._ensure(sub)
        job = self._jobs().get(sub.job_name)

        def make_job(batch_id: int, positions: builtins.list[int], correlation_id: str | None) -> dict[str, Any]:
            prepared = job.prepare([batch_id, positions], {}, correlation_id=correlation_id, idempotency_key=None,
                                   countdown=None, eta=None, queue=None)
            return {"job": job.name, "job_id": prepared.job_id, "args": [batch_id, positions], "kwargs": {},
                    "headers": prepared.meta.headers(), "countdown": None, "eta": None, "priority": None}

        return self.backend.tick(name, filter=sub.filter, partition_by=sub.partition_by, batch_size=sub.batch_size,
                                 max_in_flight=sub.max_in_flight, make_job=make_job, publish=publish)

    def dispatch(self, names: Collection[str] | None = None) -> int:
        """Tick the declared subscriptions (``names``, or all) until none has more to read now; relay the jobs.

        Returns:
            The number of handler jobs sent.
        """
        subs = [s for s in self.declared() if names is None or s.name in names]
        outbox = self._jobs().outbox

        def publish(payload: dict[str, Any]) -> None:
            outbox.dispatch(JOB_KIND, payload)

        sent = 0
        more = True
        while more:
            more = False
            for sub in subs:
                # Published at once, before the next subscription's tick: a live event's job does not wait
                # for the ticks of the subscriptions it does not match, nor for a drain. The backend
                # publishes them itself right after its commit when it can (PostgreSQL); what it leaves
                # is relayed here by id.
                result = self._tick(sub.name, publish)
                sent += result.sent
                more = more or result.read >= sub.batch_size * sub.max_in_flight
                if result.outbox_ids and outbox.send(result.outbox_ids) < len(result.outbox_ids):
                    # Another relay held the outbox (it returns at once): have this process's relay
                    # thread drain again right after, rather than at its next interval.
                    outbox.wake()
        return sent

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        if self.context.settings.subscriptions.dispatcher:
            self.start_dispatcher()

    def on_worker_shutdown(self) -> None:
        self.stop_dispatcher()

    def start_dispatcher(self) -> None:
        """Run the dispatcher in a thread of this process (a worker's main process does, on start).

        Every process that runs it may dispatch any subscription: each step holds the
        subscription's row, so concurrent dispatchers never send a batch twice, and when
        one process dies another one goes on.
        """
        with self._lock:
            if self._dispatcher is None:
                from ._dispatcher import Dispatcher

                self._dispatcher = Dispatcher(self, self.context, self._jobs)
            self._dispatcher.start()

    def stop_dispatcher(self) -> None:
        """Stop this process's dispatcher thread (idempotent)."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.stop()

    # -- the handler job's work ---------------------------------------------------------

    def handle(self, name: str, batch_id: int, positions: builtins.list[int]) -> dict[str, Any]:
        """Run ``name``'s handler on one batch (the body of its handler job).

        A batch no longer stored (handled already: a redelivered job) is skipped.
        A subscription's handler runs first and the batch is recorded as handled
        afterwards (at least once); a projection's writes and that record commit
        in one transaction (exactly once in what it writes there).

        Returns:
            ``{"handled": n}`` or ``{"skipped": True}``.

        Raises:
            CircuitOpen: the event store could not be read or written (``details["breaker"]`` is
                ``events.database``, which the handler job uses): the job waits for the database
                instead of spending its retries, so a database outage never dead-letters a batch.
            Whatever the handler raised, with a note naming the event's position and id.
        """
        from sqlalchemy.exc import InterfaceError, OperationalError

        failure: builtins.list[Any] = []
        try:
            return self._handle(name, batch_id, positions, failure)
        except (ServiceUnavailable, OperationalError, InterfaceError) as exc:
            if failure or isinstance(exc, CircuitOpen):
                raise  # the handler's own error: retried and dead-lettered as the job declares
            raise CircuitOpen(f"subscription {name}: the event store is unreachable ({type(exc).__name__})",
                              breaker=STORE_BREAKER) from exc

    def _handle(self, name: str, batch_id: int, positions: builtins.list[int],
                failure: builtins.list[Any]) -> dict[str, Any]:
        sub = self.get(name)
        backend = self.backend
        state, loaded = backend.load_batch(name, batch_id, positions)
        if state is None:
            return {"skipped": True}
        if state == "dead":
            # A replay: the dead batch keeps only the failing key's events (the others went on).
            loaded = backend.load(backend.batch_positions(name, batch_id) or [])
        events = self._upcasters().upcast_many(loaded)
        try:
            if sub.projection:
                return self._project(sub, batch_id, events, failure)
            for event in events:
                self._call(sub, event, failure)
            backend.complete(name, batch_id)
        except BaseException:
            if failure:
                try:
                    backend.record_error(name, batch_id, failure[0], failure[1])
                except Exception:
                    log.warning("subscription %s: could not record the failure of batch %s", name, batch_id)
            raise
        return {"handled": len(events)}

    def _project(self, sub: Subscription, batch_id: int, events: builtins.list[StoredEvent],
                 failure: builtins.list[Any]) -> dict[str, Any]:
        from sqlalchemy.orm import Session

        with self.backend.handling(sub.name, batch_id) as (conn, state):
            if state is None:
                return {"skipped": True}
            session = Session(bind=conn)
            try:
                for event in events:
                    self._call(sub, event, failure, session)
                session.flush()
            finally:
                session.close()
            self.backend.complete(sub.name, batch_id, conn)
        return {"handled": len(events)}

    @staticmethod
    def _call(sub: Subscription, event: StoredEvent, failure: builtins.list[Any], *extra: Any) -> None:
        try:
            sub.handler(event, *extra)
        except BaseException as exc:
            where = (f"subscription {sub.name!r}: the handler failed at position {event.position} "
                     f"(event {event.event_id}, type {event.event_type})")
            exc.add_note(where)
            failure[:] = [f"{where}: {type(exc).__name__}: {exc}", event.position]
            raise

    # -- rebuilding a projection ----------------------------------------------------------

    def projections(self) -> builtins.list[tuple[SubscriptionStatus, int | None]]:
        """Every projection (declared here or stored) with the position its unfinished rebuild reached, if any."""
        return [(s, self.backend.rebuild_position(s.name)) for s in self.list()
                if s.spec.get("kind") == "projection"]

    def rebuild(self, name: str, *, restart: bool = False, chunk: int = 500,
                progress: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
        """Replay every matching event from position zero into fresh copies of the projection's tables,
        then swap them in when caught up with the head.

        The live tables keep serving (and the live projection keeps writing them) until
        the swap, one transaction that applies the events appended meanwhile, replaces the
        tables and moves the projection's checkpoint to the head. The handler runs in
        this process; its statements are pointed at the copies. An interrupted rebuild
        leaves the live tables untouched and resumes where it stopped (``restart``: from zero).

        Parameters:
            chunk: events applied per transaction.
            progress: ``progress(position, head, applied)`` after every chunk.

        Returns:
            ``{"applied": events applied by this call, "position": the head swapped in at, "resumed_from": p}``.

        Raises:
            UnknownSubscription: no such projection is declared here.
            ValidationError: it is not a projection, declares no ``tables``, or a table is missing.
            Whatever the handler raised (the rebuild stops; run it again to resume).
        """
        sub = self.get(name)
        if not sub.projection or not sub.tables:
            raise ValidationError(f"{name!r} is not a projection with tables: declare "
                                  "@fnd.projection(..., tables=[...]) to rebuild it", field="tables")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValidationError(f"chunk must be an integer >= 1, got {chunk!r}", field="chunk")
        self._ensure(sub)
        rebuilder = self.backend.rebuilder(name, sub.tables)
        position = started = rebuilder.prepare(restart=restart)
        upcast = self._upcasters().upcast_many
        failure: builtins.list[Any] = []

        def apply(conn: Any, events: builtins.list[StoredEvent]) -> None:
            from sqlalchemy.orm import Session

            session = Session(bind=conn)
            try:
                for event in upcast(events):
                    self._call(sub, event, failure, session)
                session.flush()
            finally:
                session.close()

        applied = 0
        while True:
            n, position, head = rebuilder.step(position, sub.filter, chunk, apply)
            applied += n
            if progress is not None:
                progress(position, head, applied)
            if position >= head:
                break
        n, head = rebuilder.swap(position, sub.filter, apply)
        applied += n
        if progress is not None:
            progress(head, head, applied)
        log.info("projection %s rebuilt: %d events applied, swapped in at %d", name, applied, head)
        return {"applied": applied, "position": head, "resumed_from": started}

    def dead_lettered(self, entry: DeadLetter) -> None:
        """A handler job went to the DLQ: its batch stops blocking its partition (the DLQ holds it)."""
        name = entry.job[len(HANDLER_JOB_PREFIX):]
        sub = self._subs.get(name)
        if sub is None or not entry.args:
            return
        reason = f"batch {entry.args[0]} dead-lettered: {entry.exception_type}: {entry.exception_message}"
        self.backend.mark_dead(name, int(entry.args[0]), pause=sub.on_dead_letter == "pause", reason=reason,
                               partition_by=sub.partition_by)
        log.warning("subscription %s: %s", name, reason)


class _DeadLetterHooks(JobHooks):
    """Tells the subscription service when one of its handler jobs is dead-lettered."""

    def __init__(self, service: SubscriptionService) -> None:
        self._service = service

    def after_dead_letter(self, entry: DeadLetter) -> None:
        if entry.job.startswith(HANDLER_JOB_PREFIX):
            self._service.dead_lettered(entry)
