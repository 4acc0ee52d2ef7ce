"""The jobs service: declaring, sending, observing and dead-lettering jobs."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .._ids import new_id
from ..errors import BatchNotSent, ServiceUnavailable, UnknownJob, ValidationError
from ..lifecycle import ServiceContext, ServiceLifecycle, track_fork
from ._bulk import BatchPublisher, Outgoing
from ._celery import dead_letter_queue
from ._coord import Coordinator
from ._deadletter import DeadLetter, DeadLetterQueues
from ._dlq_stores import DeadLetterStore, KombuDeadLetterStore, RedisDeadLetterStore
from ._job import (
    _STATES,
    DEFAULT_BATCH_SIZE,
    Job,
    JobHandle,
    JobStatus,
    PreparedJob,
    failure_from_result,
    raise_timeout,
)
from ._meta import JobMeta
from ._options import JobOptions, RateKey, RateLimit, validate_options
from ._task import EsfTask, run_job

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from celery.canvas import Signature
    from kombu import Connection
    from sqlalchemy.orm import Session

    from ..resilience import CircuitBreaker
    from ..settings import Settings
    from ._gather import GatherService
    from ._outbox import JobOutbox
    from ._schedules import Schedule, ScheduleService

log = logging.getLogger("esf.jobs")

#: Consecutive failed publishes (each after kombu's own retries) that open the breaker ``broker``.
BROKER_BREAKER_FAILURES = 3

#: Seconds a delivery counter is kept.
DELIVERY_COUNTER_TTL_S = 7 * 86400


class JobService(ServiceLifecycle):
    """Jobs of one deployment (``fnd.jobs``).

    Parameters:
        context: the settings and the providers of the Celery app, the event store, the backends, the
            breakers, telemetry and the job hooks.
        bind_task: called with each declared job's Celery task (the Foundation sets ``task.foundation``,
            through which a worker runs the job).
    """

    def __init__(self, context: ServiceContext, *, bind_task: Callable[[EsfTask], None] | None = None) -> None:
        #: What this service uses (settings, providers); its parts (gathers, schedules, outbox) use it too.
        self.context = context
        self._bind_task = bind_task
        self._jobs: dict[str, Job[Any, Any]] = {}
        track_fork(self)

    @property
    def settings(self) -> Settings:
        return self.context.settings

    # -- lifecycle (esf.lifecycle) -------------------------------------------

    def before_worker_boot(self) -> None:
        # This process forks pool processes: its outbox relay closes its connections after each batch.
        self.outbox.forking = True

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        self.outbox.start()

    def after_fork(self) -> None:
        # The coordinator's client belongs to the parent: this process builds its own on first use.
        self.__dict__.pop("coordinator", None)

    def on_worker_shutdown(self) -> None:
        if "outbox" in self.__dict__:
            self.outbox.stop()

    def close(self) -> None:
        """Close the coordinator, the schedule store and the batch publisher, those that were opened."""
        for name in ("coordinator", "schedules", "batches"):
            opened = self.__dict__.get(name)
            if opened is not None:
                opened.close()

    # -- declaring ---------------------------------------------------------

    def declare(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        queue: str | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        jitter: bool = True,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        timeout: float | None = None,
        unique_for: float | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | RateKey | None = None,
        priority: int | None = None,
        uses: Sequence[str] = (),
    ) -> Job[Any, Any]:
        """Declare ``fn`` as a job (see ``Foundation.job``). Raises ValidationError for bad options."""
        defaults = self.context.settings.jobs
        job_name = name or f"{fn.__module__}.{fn.__qualname__}".replace(".<locals>.", ".")
        q = queue or defaults.default_queue
        n_retries = defaults.default_retries if retries is None else retries
        b = defaults.default_backoff_s if backoff is None else backoff
        mb = defaults.default_max_backoff_s if max_backoff is None else max_backoff
        t = defaults.default_timeout_s if timeout is None else timeout
        validate_options(name=job_name, queue=q, queues=defaults.all_queues, retries=n_retries, backoff=b,
                         max_backoff=mb, timeout=t, retry_on=retry_on, unique_for=unique_for,
                         rate_limit=rate_limit, priority=priority)
        used = _validate_uses(uses)
        if job_name in self._jobs:
            raise ValidationError(f"a job named {job_name!r} is already declared", errors={"name": "duplicate"})
        options = JobOptions(
            name=job_name,
            queue=q,
            retries=n_retries,
            backoff_s=float(b),
            max_backoff_s=float(mb),
            jitter=jitter,
            retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
            timeout_s=float(t),
            unique_for_s=unique_for,
            rate_limit=RateLimit.parse(rate_limit) if rate_limit is not None else None,
            rate_limit_key=rate_limit_key,
            priority=priority,
            uses=used,
        )
        app = self.context.celery()

        def runner(task: EsfTask, *args: Any, **kwargs: Any) -> Any:
            return run_job(task, args, kwargs)

        runner.__name__ = getattr(fn, "__name__", "job")
        runner.__doc__ = fn.__doc__
        task = app.task(
            runner,
            bind=True,
            base=EsfTask,
            name=job_name,
            queue=options.queue,
            soft_time_limit=options.timeout_s,
            time_limit=options.timeout_s + defaults.hard_timeout_grace_s,
            acks_late=True,
            reject_on_worker_lost=True,
            max_retries=None,
            priority=priority,
            # Not a "shared" task: Celery would add it to every app created later in this process.
            shared=False,
        )
        if self._bind_task is not None:
            self._bind_task(task)
        for breaker in used:
            self.context.breakers().get(breaker)  # listed in health from the start
        job: Job[Any, Any] = Job(self, fn, options, task)
        task.esf_job = job
        self._jobs[job_name] = job
        return job

    def get(self, name: str) -> Job[Any, Any]:
        """The declared job ``name``. Raises UnknownJob."""
        try:
            return self._jobs[name]
        except (KeyError, TypeError):  # TypeError: a list or dict is no job name either
            known = ", ".join(sorted(self._jobs)) or "none"
            shown = ascii(name if not isinstance(name, str) or len(name) <= 200 else name[:200] + "...")
            raise UnknownJob(f"no job named {shown} is declared (declared: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._jobs.values()))

    @cached_property
    def schedules(self) -> ScheduleService:
        """Schedules: add, change and remove them at run time (``esf beat`` fires them)."""
        from ._schedules import ScheduleService

        return ScheduleService(self, self.context.injected.schedule_store)

    def schedule(self, name: str | None = None, *, job: str, cron: str | None = None,
                 every: float | timedelta | None = None, args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, queue: str | None = None) -> Schedule:
        """Declare a schedule of the job named ``job`` in code (see ``ScheduleService.declare``)."""
        return self.schedules.declare(name, job=job, cron=cron, every=every, args=args, kwargs=kwargs, queue=queue)

    # -- sending -------------------------------------------------------------

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> JobHandle:
        """Enqueue the declared job ``name`` (same options as ``Job.enqueue``)."""
        return self.get(name).enqueue(*args, **kwargs)

    def enqueue_many(self, name: str, items: Any, **options: Any) -> list[JobHandle]:
        """``enqueue_many`` of the declared job ``name`` (same items and options as ``Job.enqueue_many``)."""
        return self.get(name).enqueue_many(items, **options)

    def send(self, job: Job[Any, Any], prepared: PreparedJob, *, countdown: float | None = None,
             eta: datetime | None = None, priority: int | None = None, session: Session | None = None) -> JobHandle:
        """Send a prepared job (deduplicating with ``unique_for``); with ``session``, through the outbox."""
        meta = prepared.meta
        claim, duplicate = self._claim(job, prepared)
        if duplicate is not None:
            return duplicate
        ctx = job.context(prepared)
        self.context.run_hooks("before_enqueue", ctx)
        prio = priority if priority is not None else job.options.priority
        try:
            if session is not None:
                self.outbox.put(session, job, prepared, countdown=countdown, eta=eta, priority=prio)
            else:
                self._publish(job.task, prepared.job_id, list(prepared.args), prepared.kwargs, meta,
                              countdown=countdown, eta=eta, priority=prio)
        except BaseException:
            if claim is not None:  # not sent: a later enqueue of the same job must not be dropped
                self._release(claim)
            raise
        self.context.run_hooks("after_enqueue", ctx)
        return JobHandle(self, prepared.job_id, job.name, correlation_id=meta.correlation_id)

    def send_many(self, job: Job[Any, Any], prepared: Sequence[PreparedJob], *, countdown: float | None = None,
                  eta: datetime | None = None, priority: int | None = None, session: Session | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> list[JobHandle]:
        """Send prepared jobs in batches (see ``Job.enqueue_many``); one handle per job, in order."""
        handles: list[JobHandle | None] = [None] * len(prepared)
        todo: list[tuple[int, PreparedJob, str | None]] = []
        for index, p in enumerate(prepared):
            claim, duplicate = self._claim(job, p)
            if duplicate is not None:
                handles[index] = duplicate
            else:
                todo.append((index, p, claim))
        prio = priority if priority is not None else job.options.priority
        sent: list[str] = []
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            contexts = [job.context(p) for _, p, _ in chunk]
            for ctx in contexts:
                self.context.run_hooks("before_enqueue", ctx)
            try:
                if session is not None:
                    for _, p, _ in chunk:
                        self.outbox.put(session, job, p, countdown=countdown, eta=eta, priority=prio)
                else:
                    self._publish_batch([
                        Outgoing(job.task, p.job_id, list(p.args), p.kwargs,
                                 publish_options(p.meta, countdown=countdown, eta=eta, priority=prio))
                        for _, p, _ in chunk
                    ])
            except BaseException as exc:
                confirmed = set(exc.details.get("sent", ())) if isinstance(exc, BatchNotSent) else set()
                for (_, p, claim), ctx in zip(chunk, contexts, strict=True):
                    if p.job_id in confirmed:
                        self.context.run_hooks("after_enqueue", ctx)
                    elif claim is not None:
                        self._release(claim)
                for _, _, claim in todo[start + batch_size :]:
                    if claim is not None:
                        self._release(claim)
                if isinstance(exc, BatchNotSent):
                    exc.details["sent"] = sent + [p.job_id for _, p, _ in chunk if p.job_id in confirmed]
                    exc.details["not_sent"] = list(exc.details.get("not_sent", ())) + [
                        p.job_id for _, p, _ in todo[start + batch_size :]
                    ]
                raise
            for (index, p, _), ctx in zip(chunk, contexts, strict=True):
                self.context.run_hooks("after_enqueue", ctx)
                handles[index] = JobHandle(self, p.job_id, job.name, correlation_id=p.meta.correlation_id)
                sent.append(p.job_id)
        return [h for h in handles if h is not None]

    def _claim(self, job: Job[Any, Any], prepared: PreparedJob) -> tuple[str | None, JobHandle | None]:
        """``unique_for``: ``(claim key, None)`` when this job may be sent, ``(None, first job's handle)`` if not."""
        if not job.options.unique_for_s:
            return None, None
        claim = f"unique:{job.unique_key(prepared)}"
        existing = self.coordinator.claim(claim, prepared.job_id, job.options.unique_for_s)
        if existing is None:
            return claim, None
        return None, JobHandle(self, existing, job.name, duplicate=True,
                               correlation_id=prepared.meta.correlation_id)

    def _release(self, claim: str) -> None:
        try:
            self.coordinator.delete(claim)
        except Exception as exc:  # the claim expires by itself
            log.warning("could not release the unique claim of a job that was not sent: %s", exc)

    def _publish_batch(self, batch: list[Outgoing]) -> None:
        """``batches.publish`` behind the broker breaker: while it is open nothing is sent (BatchNotSent)."""
        breaker = self.broker_breaker
        if not breaker.allow():
            opened = breaker.open_error()
            raise BatchNotSent(f"{opened}; none of a batch of {len(batch)} jobs was sent", sent=[], uncertain=[],
                               refused=[], not_sent=[o.job_id for o in batch], breaker=breaker.name)
        try:
            self.batches.publish(batch)
        except BatchNotSent as exc:
            if exc.details.get("sent") or exc.details.get("refused"):
                breaker.record_success()  # the broker answered part of the batch
            else:
                breaker.record_failure()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.record_success()

    @cached_property
    def batches(self) -> BatchPublisher:
        """Publishes ``enqueue_many``'s batches (connections of their own)."""
        return BatchPublisher(self.context.celery(), self.context.settings.broker_kind)

    def _publish(self, task: EsfTask, job_id: str, args: list[Any], kwargs: dict[str, Any], meta: JobMeta, *,
                 countdown: float | None = None, eta: datetime | None = None, priority: int | None = None) -> None:
        options = publish_options(meta, countdown=countdown, eta=eta, priority=priority)
        breaker = self.broker_breaker
        if not breaker.allow():
            raise breaker.open_error()
        try:
            task.apply_async(args, kwargs, task_id=job_id, **options)
        except Exception as exc:
            from amqp.exceptions import MessageNacked
            from kombu.exceptions import OperationalError

            if _caused_by(exc, MessageNacked):
                breaker.record_success()  # the broker answered
                raise ServiceUnavailable(f"the broker refused job {task.name}[{job_id}] (basic.nack: a full queue "
                                         "or a broker-side limit); it was not queued", job_id=job_id) from exc
            if isinstance(exc, OperationalError | ConnectionError | OSError):
                breaker.record_failure()
                raise ServiceUnavailable(f"cannot send job {task.name}: broker unreachable ({exc})") from exc
            breaker.release()
            raise
        breaker.record_success()

    @cached_property
    def broker_breaker(self) -> CircuitBreaker:
        """The breaker ``broker`` of this process's publishes (listed in health).

        Each publish that could not reach the broker has spent kombu's retries (about 5 s); after
        ``BROKER_BREAKER_FAILURES`` of them in a row (at once, from concurrent producers) the next
        publishes fail at once with CircuitOpen (a ServiceUnavailable) until a trial publish, after 1 s
        doubling up to 30 s, reaches the broker. A single outage a producer thread waits out never opens
        it. A refused message (``basic.nack``) is an answer of the broker, a bad argument is no verdict.
        """
        from ..resilience import dependency_breaker

        breaker = dependency_breaker("broker", failure_threshold=BROKER_BREAKER_FAILURES)
        self.context.breakers().adopt(breaker)
        return breaker

    @cached_property
    def gathers(self) -> GatherService:
        """Scatter-gathers (see ``Foundation.gather``) and the store of their results."""
        from ._gather import GatherService

        return GatherService(self)

    @cached_property
    def outbox(self) -> JobOutbox:
        """The transactional outbox of ``enqueue(..., session=)`` and its relay."""
        from ._outbox import JobOutbox

        return JobOutbox(self)

    def once(self, key: str, *, session: Session | None = None) -> AbstractContextManager[bool]:
        """Exactly-once effects on at-least-once delivery: an idempotency ledger.

        ``with fnd.jobs.once(f"charge:{order_id}", session=s) as first:`` yields True
        the first time ``key`` is seen; the key is recorded in ``s``'s transaction,
        so it commits together with the handler's own writes, and a redelivered job
        (``first`` is False) skips the effect it already committed.

        Raises:
            ValidationError: ``key`` is empty or longer than the ledger allows.
            UnsupportedCapability: the event store backend has no idempotency ledger.
        """
        from ..events import TransactionalEventStore, require_capability
        from ._meta import current_job

        events = self.context.events()
        require_capability(events, TransactionalEventStore, needed_for="jobs.once (the idempotency ledger)")
        current = current_job.get()
        return events.once(key, session=session, job_id=current.job_id if current else None)

    # -- observing ---------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """The job's status as the result backend knows it."""
        state = self.context.celery().AsyncResult(job_id).state
        return _STATES.get(state, "unknown")

    def wait(self, job_id: str, timeout: float | None = 30.0) -> Any:
        """Wait for a job's result (see ``JobHandle.wait``)."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        result = self.context.celery().AsyncResult(job_id)
        try:
            value = result.get(timeout=timeout, propagate=False, interval=0.1, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise raise_timeout(job_id, timeout) from None
        if result.state == "FAILURE":
            raise failure_from_result(job_id, value, result.state)
        return value

    # -- worker side ---------------------------------------------------------

    @cached_property
    def coordinator(self) -> Coordinator:
        """The injected coordinator, else the one of ``fnd.backends``: Redis when a Redis URL is configured, else
        SQLite under ``data_dir``."""
        injected = self.context.injected.coordinator
        if injected is not None:
            return injected
        coordinator = self.context.backends().coordinator()
        breaker = getattr(coordinator, "breaker", None)
        if breaker is not None:
            self.context.breakers().adopt(breaker)  # listed in health, its state changes recorded
        return coordinator

    def count_delivery(self, job_id: str, meta: JobMeta, *, redelivered: bool = True) -> int:
        """This execution's number for this attempt of the job; called as the job starts running.

        Only executions are counted, never deliveries: a message handed back before it ran
        (a warm shutdown returning a held ETA job, a reconnect) adds nothing, because the
        count is taken when a job starts. A first delivery is 1 without a round trip; a
        redelivered job (the broker marks every message it hands out again) counts
        ``1 + INCR deliveries:<job id>:<replay>:<attempt>``, so a job handed back unrun
        before its first execution starts at 2. Both brokers count here; RabbitMQ's quorum
        ``x-delivery-limit`` is a looser backstop.
        """
        if not redelivered:
            return 1
        key = f"deliveries:{job_id}:{meta.replay}:{meta.attempt}"
        try:
            return 1 + self.coordinator.incr(key, DELIVERY_COUNTER_TTL_S)
        except ServiceUnavailable:
            log.warning("delivery counter unavailable for job %s; running it without the cap", job_id)
            return 0

    def rate_limit_wait(self, options: JobOptions, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        """Seconds to wait before the job may run under its global rate limit (0: run now)."""
        assert options.rate_limit is not None
        key = f"rate:{options.name}:{options.partition(args, kwargs)}"
        return self.coordinator.take_token(key, options.rate_limit.rate_per_s, options.rate_limit.burst)

    # -- dead letters ----------------------------------------------------------

    @cached_property
    def dlq(self) -> DeadLetterQueues:
        """The dead-letter queues (list, show, replay, purge)."""
        settings = self.context.settings
        return DeadLetterQueues(
            connect=self._connection,
            queues=settings.jobs.all_queues,
            declare=lambda name: dead_letter_queue(settings, name),
            resend=self._resend,
            store=self._dlq_store(),
            on_publish=lambda entry: self.context.run_hooks("after_dead_letter", entry),
            on_replay=lambda entry, job_id: self.context.run_hooks("after_replay", entry, job_id=job_id),
        )

    def _dlq_store(self) -> DeadLetterStore:
        settings = self.context.settings
        if settings.broker_kind == "redis":
            import redis as _redis

            client = _redis.Redis.from_url(settings.effective_broker_url, socket_timeout=30,
                                           socket_connect_timeout=5, health_check_interval=10)
            return RedisDeadLetterStore(client, settings.jobs.dlq_claim_ttl_s)
        return KombuDeadLetterStore(self._connection, functools.partial(dead_letter_queue, settings))

    def _connection(self) -> Connection:
        conn: Connection = self.context.celery().connection_for_write()
        conn.ensure_connection(max_retries=3)
        return conn

    def dead_letter(self, entry: DeadLetter) -> None:
        """Publish ``entry`` to its queue's DLQ (from the worker); returns once the broker holds it.

        Raises:
            Exception: the entry was not stored (counted as ``esf.dlq.publish_failed`` and
                logged); the caller must keep the job on its queue.
        """
        try:
            self.dlq.publish(entry)
        except Exception as exc:
            log.error("could not dead-letter job %s[%s] to %s.dlq (%s: %s); the job stays on its queue",
                      entry.job, entry.job_id, entry.queue, type(exc).__name__, exc)
            if self.context.settings.telemetry.enabled:
                try:
                    self.context.telemetry().counter("esf.dlq.publish_failed", {"queue": entry.queue}).inc()
                except Exception:  # a metric must not hide the failure being reported
                    log.exception("could not count a failed dead-letter publish")
            raise
        log.error("job %s[%s] dead-lettered to %s.dlq: %s (%s: %s)", entry.job, entry.job_id, entry.queue,
                  entry.reason, entry.exception_type, entry.exception_message)

    def _resend(self, entry: DeadLetter, args: list[Any], kwargs: dict[str, Any], corrected: bool) -> str:
        job = self._jobs.get(entry.job)
        meta = JobMeta(
            queue=entry.queue,
            correlation_id=entry.correlation_id,
            idempotency_key=entry.idempotency_key,
            enqueued_at=time.time(),
            replay=entry.replay + 1,
            replayed_from=entry.id,
            args_corrected=corrected,
        )
        # The replay runs under the same job id: the dead-lettered run's stored FAILURE is forgotten first,
        # so a wait() right after the replay waits for the new run instead of returning the old outcome.
        try:
            self.context.celery().backend.forget(entry.job_id)
        except Exception as exc:
            log.warning("replay of %s: the old result could not be forgotten (%s: %s); a wait() may see it",
                        entry.job_id, type(exc).__name__, exc)
        if job is not None:
            self._publish(job.task, entry.job_id, args, kwargs, meta)
        else:
            self.context.celery().send_task(entry.job, args, kwargs, task_id=entry.job_id, queue=entry.queue,
                                            headers=meta.headers())
        return entry.job_id

    # -- workflows -------------------------------------------------------------

    def _apply(self, sig: Signature, correlation_id: str | None) -> Any:
        from ._meta import H_CORRELATION, current_job

        parent = current_job.get()
        cid = correlation_id or (parent.correlation_id if parent else None)

        cid = cid or new_id()
        headers = JobMeta(queue=self.context.settings.jobs.default_queue, correlation_id=cid).headers()
        headers.pop("esf_queue", None)
        result = sig.apply_async(headers=headers)
        result.esf_correlation_id = cid
        assert headers[H_CORRELATION] == cid
        return result

    def run_workflow(self, sig: Signature, *, correlation_id: str | None = None) -> Workflow:
        """Send a chain, group or chord; every step carries ``correlation_id``."""
        return Workflow(self, self._apply(sig, correlation_id))


class Workflow:
    """A running chain, group or chord of jobs."""

    def __init__(self, jobs: JobService, result: Any) -> None:
        self._jobs = jobs
        self.result = result
        self.id: str = result.id
        self.correlation_id: str = result.esf_correlation_id

    def wait(self, timeout: float | None = 60.0) -> Any:
        """The final result (a list for a group). Raises JobFailed naming the failing step, or Timeout."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            value = self.result.get(timeout=timeout, propagate=True, interval=0.1, disable_sync_subtasks=False)
        except CeleryTimeout:
            raise raise_timeout(self.id, timeout) from None
        except Exception as exc:
            from ..errors import JobFailed

            raise JobFailed(f"workflow {self.id} failed: {type(exc).__name__}: {exc}", job_id=self.id,
                            remote_type=type(exc).__name__, remote_message=str(exc)) from exc
        return value


def _caused_by(exc: BaseException, cls: type[BaseException]) -> bool:
    """True when ``exc`` or an exception it was raised from is a ``cls`` (kombu wraps transport errors)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, cls):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def publish_options(meta: JobMeta, *, countdown: float | None = None, eta: datetime | None = None,
                    priority: int | None = None) -> dict[str, Any]:
    """``apply_async``'s options for a job message (the task id apart)."""
    options: dict[str, Any] = {"queue": meta.queue, "headers": meta.headers()}
    if countdown is not None:
        options["countdown"] = countdown
    if eta is not None:
        options["eta"] = eta
    if priority is not None:
        options["priority"] = priority
    return options


def ensure_sequence(items: Sequence[Any] | Any) -> list[Any]:
    return list(items) if isinstance(items, list | tuple) else [items]


def _validate_uses(uses: object) -> tuple[str, ...]:
    """``uses``: a list of breaker names (a bare string is refused: it would be read letter by letter)."""
    from ..resilience import validate_breaker_name

    if isinstance(uses, str) or not isinstance(uses, (list, tuple)):
        raise ValidationError(f"uses: expected a list of breaker names, got {type(uses).__name__}",
                              errors={"uses": "not a list"})
    try:
        return tuple(dict.fromkeys(validate_breaker_name(name) for name in uses))
    except ValidationError as exc:
        raise ValidationError(f"uses: {exc}", errors={"uses": "invalid"}) from None
