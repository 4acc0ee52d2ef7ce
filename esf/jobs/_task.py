"""The Celery task behind every ESF job, and what it does around the handler."""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from ..errors import CircuitOpen, EsfError, Retry, SkipJob
from ..hooks import JobContext
from ._deadletter import DeadLetter
from ._gather import parent_gather
from ._meta import ALL_HEADERS, Current, FlagCarry, JobMeta, current_flags, current_job

if TYPE_CHECKING:
    from ..foundation import Foundation
    from ._job import Job

log = logging.getLogger("esf.jobs")

#: Seconds a pool process waits before it gives back a job whose dead letter or retry
#: could not be published (the broker redelivers it at once).
REQUEUE_PAUSE_S = 1.0
#: Shortest delay of a job deferred because a breaker it uses is open or being probed.
DEFER_MIN_S = 0.5


class JobDeadLettered(EsfError):
    """The job was moved to its dead-letter queue instead of running (again)."""

    code = "dead_lettered"


def request_headers(request: Any) -> dict[str, Any]:
    """ESF's headers of the running request (Celery exposes custom headers as attributes)."""
    out: dict[str, Any] = {}
    custom = getattr(request, "headers", None) or {}
    for name in ALL_HEADERS:
        value = custom.get(name) if isinstance(custom, dict) else None
        if value is None:
            value = getattr(request, name, None)
        if value is not None:
            out[name] = value
    return out


class EsfTask(Task):  # type: ignore[misc]
    """Base class of ESF job tasks: retries, dead-lettering, delivery limits and hooks."""

    #: Set when the job is declared.
    esf_job: Job[Any, Any]
    foundation: Foundation
    #: ESF counts attempts itself; Celery's own cap is off.
    max_retries = None
    typing = False
    Request = "esf.workers._request:EsfRequest"

    def meta(self) -> JobMeta:
        return JobMeta.from_headers(request_headers(self.request), self.esf_job.options.queue)

    def context(self, meta: JobMeta, args: tuple[Any, ...], kwargs: dict[str, Any],
                started_at: float | None = None) -> JobContext:
        return JobContext(
            job_id=str(self.request.id),
            job_name=self.name,
            queue=meta.queue,
            args=tuple(args),
            kwargs=dict(kwargs),
            correlation_id=meta.correlation_id,
            idempotency_key=meta.idempotency_key,
            attempt=meta.attempt,
            enqueued_at=meta.enqueued_at,
            started_at=started_at,
            parent_id=meta.parent_id,
        )

    def dead_letter_entry(self, meta: JobMeta, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str,
                          exc: BaseException | None, tb: str | None = None) -> DeadLetter:
        now = time.time()
        return DeadLetter(
            id=str(uuid.uuid4()),
            job_id=str(self.request.id),
            job=self.name,
            queue=meta.queue,
            args=list(args),
            kwargs=dict(kwargs),
            correlation_id=meta.correlation_id,
            idempotency_key=meta.idempotency_key,
            reason=reason,
            exception_type=type(exc).__name__ if exc is not None else None,
            exception_message=str(exc)[:4000] if exc is not None else None,
            traceback=tb,
            attempts=meta.attempt,
            first_attempt_at=meta.first_attempt_at or now,
            last_attempt_at=now,
            dead_lettered_at=now,
            replay=meta.replay,
        )


def run_job(task: EsfTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one attempt of a job inside the worker."""
    job = task.esf_job
    fnd = task.foundation
    jobs = fnd.jobs
    opts = job.options
    meta = task.meta()
    now = time.time()

    # A job whose downstream's breaker is open waits for it without running or spending a retry.
    if opts.uses:
        delay = open_breaker_delay(fnd, opts.uses)
        if delay is not None:
            defer(task, meta, now, delay, "a downstream's circuit breaker is open")
    # A job deferred by its rate limit is re-published before it counts as a delivery.
    if opts.rate_limit is not None:
        wait = jobs.rate_limit_wait(opts, args, kwargs)
        if wait > 0:
            retry_or_requeue(task, None, wait, _first_attempt(meta, now))
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    deliveries = jobs.count_delivery(str(task.request.id), meta, redelivered=redelivered)
    if deliveries > fnd.settings.jobs.max_deliveries:
        exc = JobDeadLettered(
            f"job {task.name}[{task.request.id}] was delivered {deliveries} times without finishing "
            f"(its worker died each time); moved to {meta.queue}.dlq"
        )
        settle_gather(task, meta, error=exc)
        dead_letter_or_requeue(task, task.dead_letter_entry(meta, args, kwargs, "delivery_limit", exc))
        raise exc

    ctx = task.context(meta, args, kwargs, started_at=now)
    fnd.run_hooks("before_process", ctx)
    token = current_job.set(Current(job_id=ctx.job_id, correlation_id=meta.correlation_id))
    # The enqueuing request's flag answers (or none: a job never sees the previous job's).
    flags_token = current_flags.set(
        FlagCarry(meta.flags["context"], meta.flags["answers"], received=True, correlation_id=meta.correlation_id)
        if meta.flags else None)
    started = time.perf_counter()
    stopped_by: CircuitOpen | None = None
    try:
        result = job.fn(*args, **kwargs)
    except SkipJob:
        result = None
    except CircuitOpen as exc:
        if exc.details.get("breaker") not in opts.uses:
            _fail(task, meta, ctx, args, kwargs, exc, started, retryable=opts.retryable(exc))
        # A breaker it uses opened (or another process holds its trial call) while it ran: wait for it.
        result = None
        stopped_by = exc
    except Retry as exc:
        _fail(task, meta, ctx, args, kwargs, exc, started, retryable=True, delay=exc.delay)
    except SoftTimeLimitExceeded as exc:
        _fail(task, meta, ctx, args, kwargs, exc, started, retryable=False, reason="time_limit")
    except Exception as exc:
        _fail(task, meta, ctx, args, kwargs, exc, started, retryable=opts.retryable(exc))
    finally:
        current_flags.reset(flags_token)
        current_job.reset(token)
    if stopped_by is not None:
        fnd.run_hooks("after_process", ctx, exc=stopped_by, runtime_s=time.perf_counter() - started)
        delay = open_breaker_delay(fnd, opts.uses)
        defer(task, meta, now, DEFER_MIN_S if delay is None else delay, str(stopped_by))
    fnd.run_hooks("after_process", ctx, result=result, runtime_s=time.perf_counter() - started)
    settle_gather(task, meta, result=result)
    return result


def open_breaker_delay(fnd: Foundation, uses: tuple[str, ...]) -> float | None:
    """Seconds to defer a job using ``uses`` (None: no breaker of them is open)."""
    longest: float | None = None
    for name in uses:
        breaker = fnd.breakers.get(name)
        if breaker.state == "open":
            left = breaker.retry_after()
            longest = left if longest is None else max(longest, left)
    if longest is None:
        return None
    limit: float = fnd.settings.resilience.defer_max_s
    return min(max(longest, DEFER_MIN_S), limit)


def defer(task: EsfTask, meta: JobMeta, now: float, delay: float, why: str) -> NoReturn:
    """Re-publish the job (same id, correlation and attempt) to run after ``delay`` seconds (jittered up)."""
    delay = delay * random.uniform(1.0, 1.2)
    log.info("job %s[%s] deferred %.1fs: %s", task.name, task.request.id, delay, why)
    retry_or_requeue(task, None, delay, _first_attempt(meta, now))


def _first_attempt(meta: JobMeta, now: float) -> JobMeta:
    """``meta`` with the first attempt's time set (retries and dead letters carry it)."""
    return meta if meta.first_attempt_at is not None else replace(meta, first_attempt_at=now)


def _fail(task: EsfTask, meta: JobMeta, ctx: JobContext, args: tuple[Any, ...], kwargs: dict[str, Any],
          exc: BaseException, started: float, *, retryable: bool, delay: float | None = None,
          reason: str | None = None) -> None:
    """Retry the job or dead-letter it; always raises."""
    fnd = task.foundation
    opts = task.esf_job.options
    runtime = time.perf_counter() - started
    meta = _first_attempt(meta, ctx.started_at or time.time())
    fnd.run_hooks("after_process", ctx, exc=exc, runtime_s=runtime)
    if retryable and meta.attempt <= opts.retries:
        wait = opts.delay_for(meta.attempt) if delay is None else max(0.0, float(delay))
        fnd.run_hooks("after_retry", ctx, exc=exc, delay_s=wait)
        log.warning("job %s[%s] attempt %d failed (%s: %s); retrying in %.1fs", task.name, ctx.job_id,
                    meta.attempt, type(exc).__name__, exc, wait)
        retry_or_requeue(task, exc, wait, replace(meta, attempt=meta.attempt + 1))
    why = reason or ("retries_exhausted" if retryable else "non_retryable")
    tb = "".join(traceback.format_exception(exc))
    settle_gather(task, meta, error=exc)
    dead_letter_or_requeue(task, task.dead_letter_entry(meta, args, kwargs, why, exc, tb))
    raise exc


def settle_gather(task: EsfTask, meta: JobMeta, *, result: Any = None, error: BaseException | None = None) -> None:
    """Record a gather member's outcome before its message is acknowledged.

    When the gather store cannot take it, the job goes back to its queue (``Reject(requeue=True)``)
    and runs again: the gather never waits for a result its member had but did not store.
    """
    member = parent_gather(meta)
    if member is None:
        return
    try:
        task.foundation.jobs.gathers.record(member[0], member[1], result=result, error=error)
    except Exception as exc:
        log.error("job %s[%s]: its outcome could not be stored in gather %s (%s: %s); the job stays on its queue",
                  task.name, task.request.id, member[0], type(exc).__name__, exc)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(f"gather outcome not stored: {type(exc).__name__}: {exc}", requeue=True) from exc


def dead_letter_or_requeue(task: EsfTask, entry: DeadLetter) -> None:
    """Publish ``entry``; when the broker did not take it, give the job back to its queue.

    Raising ``Reject(requeue=True)`` makes the worker return the message instead of
    acknowledging it, so a job whose dead letter was not stored is never lost: it runs
    again (its delivery counted) until its entry is stored.
    """
    try:
        task.foundation.jobs.dead_letter(entry)
    except Exception as exc:
        time.sleep(REQUEUE_PAUSE_S)  # a DLQ that keeps refusing must not become a hot loop
        raise Reject(f"dead letter not stored: {type(exc).__name__}: {exc}", requeue=True) from exc


def retry_or_requeue(task: EsfTask, exc: BaseException | None, countdown: float, meta: JobMeta) -> NoReturn:
    """Publish the next attempt; when that publish fails, give the job back to its queue.

    Celery turns a failed retry publish into ``Reject(requeue=False)``, which deletes
    the job on Redis without a dead letter; ESF requeues it instead (the attempt runs
    again, its delivery counted).
    """
    try:
        raise task.retry(exc=exc, countdown=countdown, headers=meta.headers())
    except Reject as rejected:
        if rejected.requeue:
            raise
        log.error("job %s[%s]: the retry could not be published (%s); the job stays on its queue",
                  task.name, task.request.id, rejected.reason)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(f"retry not published: {rejected.reason}", requeue=True) from rejected
