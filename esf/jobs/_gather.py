"""Scatter-gather: fan out jobs, gather their results by a deadline, then run one callback job.

``fnd.gather(calls, then=job, deadline=30)`` records the gather in the gather
store (Redis, or SQLite when embedded) before anything is sent, sends every
member with the ``esf_gather`` header (``<gather id>:<index>``) and an ETA job,
``esf.jobs.gather_deadline``, on the ``esf.jobs`` service queue. Each member's worker records the
member's result (or its final failure) in the store *before* the member's message
is acknowledged, so a worker killed in between runs the member again and the
second record changes nothing. The record that settles the gather (or the
deadline job) is the only one told to close it: it sends the callback under an
id fixed when the gather started, then marks the gather ``done``; when too few
results arrived it dead-letters the callback instead (reason ``gather_deadline``
or ``gather_min_results``, the partial outcome as its argument), and ``esf dlq
replay`` can still run it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from .._ids import new_id
from .._json import check_json, dumps
from ..errors import JobFailed, SerializationError, Timeout, UnknownJob, ValidationError
from ..services._registry import task_name
from ._deadletter import DeadLetter
from ._gather_store import GatherState, GatherStore, Verdict
from ._job import Job, JobHandle
from ._meta import JobMeta

if TYPE_CHECKING:
    from celery.canvas import Signature

    from ._service import JobService

log = logging.getLogger("esf.jobs")

#: The service task that closes a gather at its deadline: ``esf.jobs.gather_deadline`` on ``esf.jobs``.
#: A queue of its own: on RabbitMQ quorum queues an ETA job held by a worker takes one of the prefetch
#: slots of its queue's consumer until it is due, and members must not wait behind open deadlines.
DEADLINE_SERVICE = "jobs"
DEADLINE_VERB = "gather_deadline"
#: Seconds a gather's record is kept after its deadline (stragglers and ``status()`` read it).
GATHER_RETENTION_S = 7 * 86400
#: Most members one gather may have.
MAX_MEMBERS = 10_000

OnTimeout = Literal["continue", "fail"]
#: A member: ``job.s(*args, **kwargs)``, or ``(job, args)`` / ``(job, args, kwargs)`` with a Job or its name.
Call = Any


class GatherService:
    """Starts gathers and closes them (``fnd.jobs.gathers``)."""

    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    @cached_property
    def store(self) -> GatherStore:
        """The gather store of ``fnd.backends``: Redis when a Redis URL is configured, else SQLite under
        ``data_dir`` (as the coordinator)."""
        return self._jobs.context.backends().gather_store()

    # -- starting ------------------------------------------------------------------

    def start(self, calls: Sequence[Call], *, then: Job[Any, Any] | str, deadline: float | timedelta,
              min_results: int | None = None, on_timeout: OnTimeout = "fail",
              correlation_id: str | None = None) -> Gather:
        """See ``Foundation.gather``."""
        jobs = self._jobs
        then_job = self._job(then, "then")
        seconds = _deadline_s(deadline)
        if on_timeout not in ("continue", "fail"):
            raise ValidationError(f"on_timeout: must be 'continue' or 'fail', got {on_timeout!r}",
                                  errors={"on_timeout": "invalid"})
        if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
            raise ValidationError(f"calls: must be a list of job.s(...) or (job, args[, kwargs]), "
                                  f"got {type(calls).__name__}", errors={"calls": "invalid"})
        n = len(calls)
        if not 1 <= n <= MAX_MEMBERS:
            raise ValidationError(f"calls: a gather has 1 to {MAX_MEMBERS} members, got {n}",
                                  errors={"calls": "invalid"})
        need = n if min_results is None else min_results
        if isinstance(need, bool) or not isinstance(need, int) or not 1 <= need <= n:
            raise ValidationError(f"min_results: must be an integer from 1 to the number of calls ({n}), "
                                  f"got {min_results!r}", errors={"min_results": "invalid"})
        gather_id = new_id()
        members = []
        for index, call in enumerate(calls):
            job, args, kwargs = self._member(index, call)
            try:
                prepared = job.prepare(args, kwargs, correlation_id=correlation_id, idempotency_key=None,
                                       countdown=None, eta=None, queue=None)
            except ValidationError as exc:
                exc.details["item"] = index
                raise
            members.append((job, prepared))
        cid = correlation_id or members[0][1].meta.correlation_id or new_id()
        then_id = new_id()
        spec = {"n": n, "min_results": need, "on_timeout": on_timeout, "then": then_job.name,
                "then_queue": then_job.options.queue, "then_id": then_id, "correlation_id": cid,
                "deadline_at": time.time() + seconds, "members": [p.job_id for _, p in members],
                "jobs": [j.name for j, _ in members]}
        # The record exists before any member can finish; nothing is sent when it cannot be written.
        self.store.create(gather_id, spec, seconds + GATHER_RETENTION_S)
        jobs.get(task_name(DEADLINE_SERVICE, DEADLINE_VERB)).enqueue_with([gather_id], correlation_id=cid,
                                                                       countdown=seconds)
        for index, (job, prepared) in enumerate(members):
            prepared.meta = _in_gather(prepared.meta, gather_id, index, cid)
            jobs.send(job, prepared)
        log.info("gather %s started: %d jobs, then %s, deadline %.1fs, min_results %d, on_timeout %s",
                 gather_id, n, then_job.name, seconds, need, on_timeout)
        return Gather(self._jobs, gather_id, then_id, then_job.name, cid)

    def _job(self, ref: Any, label: str) -> Job[Any, Any]:
        if isinstance(ref, Job):
            return ref
        if isinstance(ref, str):
            try:
                return self._jobs.get(ref)
            except UnknownJob as exc:
                raise ValidationError(f"{label}: {exc}", errors={label: "unknown_job"}) from exc
        raise ValidationError(f"{label}: must be a declared job or its name, got {type(ref).__name__}",
                              errors={label: "invalid"})

    def _member(self, index: int, call: Any) -> tuple[Job[Any, Any], tuple[Any, ...] | list[Any], dict[str, Any]]:
        where = f"calls[{index}]"
        if hasattr(call, "task") and hasattr(call, "args") and isinstance(getattr(call, "kwargs", None), dict):
            sig: Signature = call
            return self._job(str(sig.task), where), tuple(sig.args), dict(sig.kwargs)
        if isinstance(call, tuple | list) and len(call) in (2, 3):
            job = self._job(call[0], where)
            args = call[1]
            kwargs = call[2] if len(call) == 3 else {}
            if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
                raise ValidationError(f"{where}: args must be a list and kwargs a dict", errors={where: "invalid"},
                                      item=index)
            return job, args, dict(kwargs)
        raise ValidationError(f"{where}: must be job.s(...) or (job, args[, kwargs]), got {type(call).__name__}",
                              errors={where: "invalid"}, item=index)

    # -- worker side ---------------------------------------------------------------

    def record(self, gather_id: str, index: int, *, result: Any = None, error: BaseException | None = None) -> None:
        """Store a member's outcome (before its message is acknowledged); close the gather when it settles.

        Raises:
            ServiceUnavailable: the store could not be written; the member must stay on its queue.
        """
        if error is None:
            try:
                check_json(result, "result")
                value = dumps(result)
            except SerializationError as exc:
                error, value = exc, ""
        if error is not None:
            value = f"{type(error).__name__}: {error}"[:4000]
        verdict = self.store.record(gather_id, index, error is None, value)
        if verdict == "late":
            log.warning("gather %s: job %d finished after the gather closed; its outcome is kept and ignored",
                        gather_id, index)
            self._count("esf.gather.late")
        elif verdict == "unknown":
            log.warning("gather %s: no such gather (expired?); the outcome of job %d is dropped", gather_id, index)
        self._act(gather_id, verdict)

    def expire(self, gather_id: str) -> str:
        """The deadline job: close the gather if it is still open. Returns what was done."""
        verdict = self.store.expire(gather_id)
        self._act(gather_id, verdict)
        return verdict

    def _act(self, gather_id: str, verdict: Verdict) -> None:
        if verdict not in ("closing", "failing"):
            return
        state = self.store.read(gather_id)
        if state is None:
            return
        outcome = outcome_of(state)
        spec = state.spec
        if verdict == "closing":
            then = self._jobs.get(str(spec["then"]))
            try:
                prepared = then.prepare([outcome], {}, correlation_id=str(spec["correlation_id"]),
                                        idempotency_key=None, countdown=None, eta=None, queue=None)
            except ValidationError as exc:  # the results together exceed jobs.max_payload_bytes
                entry = self._dead_letter(state, {**outcome, "results": None}, why=str(exc))
                self._jobs.dead_letter(entry)
                self.store.finish(gather_id, "failed")
                self._count("esf.gather.failed")
                return
            prepared.job_id = str(spec["then_id"])
            self._jobs.send(then, prepared)
            self.store.finish(gather_id, "done")
            log.info("gather %s closed (%s): %d of %d results; %s[%s] sent", gather_id, state.reason,
                     len(state.results), spec["n"], then.name, spec["then_id"])
            self._count("esf.gather.completed")
            return
        self._jobs.dead_letter(self._dead_letter(state, outcome))
        self.store.finish(gather_id, "failed")
        self._count("esf.gather.failed")

    def _dead_letter(self, state: GatherState, outcome: dict[str, Any], why: str = "") -> DeadLetter:
        spec = state.spec
        now = time.time()
        got, n, need = len(state.results), spec["n"], spec["min_results"]
        if not why and state.reason == "min_results":
            failed = f" ({len(state.failed)} jobs failed)" if state.failed else ""
            why = f"{got} of {n} results, fewer than min_results {need}{failed}"
        elif not why:
            why = f"{got} of {n} results by the deadline and on_timeout='fail'"
        return DeadLetter(
            id=str(uuid.uuid4()), job_id=str(spec["then_id"]), job=str(spec["then"]), queue=str(spec["then_queue"]),
            args=[outcome], kwargs={}, correlation_id=str(spec["correlation_id"]), idempotency_key=None,
            reason=f"gather_{state.reason}", exception_type="GatherFailed",
            exception_message=f"gather {state.id}: {why}; the callback did not run", traceback=None, attempts=0,
            first_attempt_at=now, last_attempt_at=now, dead_lettered_at=now, replay=0,
        )

    def _count(self, name: str) -> None:
        if self._jobs.settings.telemetry.enabled:
            try:
                self._jobs.context.telemetry().counter(name, {}).inc()
            except Exception:  # a metric must not fail the gather
                log.exception("could not count %s", name)


def _deadline_s(deadline: Any) -> float:
    seconds = deadline.total_seconds() if isinstance(deadline, timedelta) else deadline
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 30 * 86400:
        raise ValidationError(f"deadline: must be seconds (or a timedelta) > 0 and at most 30 days, got {deadline!r}",
                              errors={"deadline": "invalid"})
    return float(seconds)


def _in_gather(meta: JobMeta, gather_id: str, index: int, correlation_id: str) -> JobMeta:
    from dataclasses import replace

    return replace(meta, gather=f"{gather_id}:{index}", correlation_id=correlation_id)


def outcome_of(state: GatherState) -> dict[str, Any]:
    """The callback's argument: the results in call order (null where none arrived) and what is missing."""
    n = int(state.spec["n"])
    return {
        "gather_id": state.id,
        "reason": state.reason,
        "results": [state.results.get(i) for i in range(n)],
        "arrived": sorted(state.results),
        "failed": {str(i): state.failed[i] for i in sorted(state.failed)},
        "missing": [i for i in range(n) if i not in state.results and i not in state.failed],
    }


class Gather:
    """A running gather: ``wait()`` for the callback's result, ``status()`` for what arrived so far."""

    def __init__(self, jobs: JobService, gather_id: str, then_id: str, then: str, correlation_id: str) -> None:
        self._jobs = jobs
        self.id = gather_id
        #: The callback's job id (fixed when the gather starts).
        self.then_id = then_id
        self.then = then
        self.correlation_id = correlation_id

    def __repr__(self) -> str:
        return f"<Gather {self.id} then {self.then}[{self.then_id}]>"

    def status(self) -> dict[str, Any]:
        """``{"state": "open"|"closing"|"failing"|"done"|"failed", "late": [...], **outcome}``.

        Raises:
            NotFound: the gather is unknown (or its record expired).
        """
        from ..errors import NotFound

        state = self._jobs.gathers.store.read(self.id)
        if state is None:
            raise NotFound(f"gather {self.id} is unknown (or its record expired)", gather_id=self.id)
        return {"state": state.state, "late": state.late, **outcome_of(state)}

    def wait(self, timeout: float | None = 60.0) -> Any:
        """The callback's result, once the gather closed and the callback ran.

        Raises:
            JobFailed: the gather failed (``remote_type`` ``gather_deadline`` or ``gather_min_results``;
                the callback is in its queue's DLQ), or the callback failed.
            Timeout: not finished within ``timeout`` seconds.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] == "done":
                break
            if status["state"] == "failed":
                raise JobFailed(f"gather {self.id} failed ({status['reason']}): {len(status['arrived'])} results "
                                f"arrived; {self.then} was dead-lettered", job_id=self.then_id,
                                remote_type=f"gather_{status['reason']}", remote_message=str(status["reason"]))
            if end is not None and time.monotonic() >= end:
                raise Timeout(f"gather {self.id} did not close within {timeout} s", job_id=self.then_id)
            time.sleep(0.1)
        left = None if end is None else max(0.1, end - time.monotonic())
        return JobHandle(self._jobs, self.then_id, self.then, correlation_id=self.correlation_id).wait(left)


def parent_gather(meta: JobMeta) -> tuple[str, int] | None:
    """``(gather id, index)`` of a member job, from its ``esf_gather`` header."""
    if not meta.gather:
        return None
    gather_id, _, index = meta.gather.rpartition(":")
    return (gather_id, int(index)) if gather_id and index.isdigit() else None

