"""The service-task registry (``fnd.services``): declaring, listing and describing service tasks."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import EsfError, ServiceUnavailable, UnknownJob, ValidationError
from ..jobs._deadletter import dlq_name
from ..settings import SERVICES
from ._types import DefaultSchedule, ServiceTask, ServiceTaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events import StoredEvent
    from ..jobs import Job, JobService
    from ..lifecycle import ServiceContext

log = logging.getLogger("esf.services")

#: A verb: one lower-case identifier (``prune``, ``outbox_sweep``).
VERB_RE = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
#: Lifecycle events that end a run (the newest one is a task's last run).
_RUN_ENDS = ("job.succeeded", "job.failed")
#: Newest run-ending events looked at for the last run.
_LAST_RUN_SCAN = 50


def _step_time(event: StoredEvent) -> float:
    at = event.data.get("at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else event.recorded_at.timestamp()


def task_name(service: str, verb: str) -> str:
    """``esf.<service>.<verb>``: the job name of a service task (the queue carries the namespace, not the name)."""
    return f"esf.{service}.{verb}"


class ServiceRegistry:
    """Every foundation service's routed tasks (``fnd.services``).

    Parameters:
        context: the settings and the event store (where a task's last run is looked up).
        jobs: the jobs service the tasks and their schedules are declared in.
    """

    def __init__(self, context: ServiceContext, *, jobs: Callable[[], JobService]) -> None:
        self._context = context
        self._jobs = jobs
        self._declared: dict[str, ServiceTask] = {}

    # -- declaring -------------------------------------------------------------

    def task(
        self,
        service: str,
        verb: str,
        *,
        retries: int,
        backoff: float,
        timeout: float,
        idempotency: str,
        max_backoff: float = 60.0,
        retry_on: tuple[type[BaseException], ...] = (ServiceUnavailable,),
        schedule: DefaultSchedule | None = None,
    ) -> Callable[[Callable[..., Any]], Job[Any, Any]]:
        """Declare the decorated function as the service task ``esf.<service>.<verb>`` on ``esf.<service>``.

        Parameters:
            service: one of ESF's services (``events``, ``config``, ``telemetry``, ``cache``, ``flags``, ``secrets``,
                ``jobs``).
            verb: what the task does, a lower-case identifier (``prune``).
            retries, backoff, max_backoff: attempts after the first, first delay and cap (seconds, doubling).
            timeout: soft time limit of one attempt (seconds).
            idempotency: why a second run of the same message is harmless (shown by ``esf services``).
            retry_on: exceptions worth retrying; any other goes to ``esf.<service>.dlq`` at once.
            schedule: the default schedule ``esf beat`` fires it on (``enabled=False``: removed from the store).

        Raises:
            ValidationError: an unknown service, a bad verb, an empty ``idempotency``, a bad job option or a
                name declared twice; nothing is declared then.

        Returns:
            a decorator returning the declared :class:`~esf.jobs.Job`.
        """
        errors: dict[str, str] = {}
        if service not in SERVICES:
            errors["service"] = f"{service!r} is not one of ESF's services ({', '.join(SERVICES)})"
        if not isinstance(verb, str) or not VERB_RE.match(verb):
            errors["verb"] = f"{verb!r} is not a lower-case identifier of at most 50 characters"
        if not isinstance(idempotency, str) or not idempotency.strip():
            errors["idempotency"] = "say why running the task twice is harmless"
        if schedule is not None and not isinstance(schedule, DefaultSchedule):
            errors["schedule"] = f"must be a DefaultSchedule, got {type(schedule).__name__}"
        if errors:
            detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise ValidationError(f"service task {service}.{verb}: {detail}", errors=errors)
        name = task_name(service, verb)
        if name in self._declared:
            raise ValidationError(f"service task {name!r} is already declared", errors={"name": "duplicate"})
        if schedule is not None:
            from ..jobs._schedules import Schedule

            Schedule(name=name, job=name, every=schedule.every_s, cron=schedule.cron)  # checks the cron now

        def decorator(fn: Callable[..., Any]) -> Job[Any, Any]:
            jobs = self._jobs()
            if schedule is not None and name in {s.name for s in jobs.schedules.declared()}:
                raise ValidationError(f"a schedule named {name!r} is already declared", errors={"name": "duplicate"})
            queue = self._context.settings.jobs.service_queue(service)
            cap = self._context.settings.services.max_backoff_s
            first, most = (backoff, max_backoff) if cap is None else (min(backoff, cap), min(max_backoff, cap))
            job = jobs.declare(fn, name=name, queue=queue, retries=retries, backoff=first,
                               max_backoff=most, retry_on=retry_on, timeout=timeout)
            self._declared[name] = self._describe(job, service, idempotency=idempotency, schedule=schedule)
            if schedule is not None:
                if schedule.enabled:
                    jobs.schedules.declare(name, job=name, every=schedule.every_s, cron=schedule.cron)
                else:
                    jobs.schedules.retire(name)
            return job

        return decorator

    # -- reading ---------------------------------------------------------------

    def tasks(self) -> list[ServiceTask]:
        """Every service task, by name: those declared here, and every other job on a service queue
        (``declared=False``)."""
        out = dict(self._declared)
        services = {self._context.settings.jobs.service_queue(s): s for s in SERVICES}
        for job in self._jobs():
            service = services.get(job.options.queue)
            if service is not None and job.name not in out:
                out[job.name] = self._describe(job, service, idempotency="", schedule=None, declared=False)
        return [out[k] for k in sorted(out)]

    def get(self, name: str) -> ServiceTask:
        """The service task ``name``. Raises UnknownJob naming the known ones."""
        for t in self.tasks():
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tasks()) or "none"
        raise UnknownJob(f"no service task named {name!r} (service tasks: {known})")

    def status(self) -> list[ServiceTaskStatus]:
        """Every service task with its schedule state and its last run (read from the schedule store and
        the job history). A store that cannot be read is named in ``problems``; nothing raises."""
        from ..events import Q, QueryableEventStore, require_capability
        from ..jobs._schedules import Schedule

        out: list[ServiceTaskStatus] = []
        schedules = self._jobs().schedules
        for t in self.tasks():
            problems: list[str] = []
            scheduled, next_run, last_fired = False, None, None
            try:
                record = schedules.store.get(t.name)
                if record is not None:
                    stored = Schedule.from_record(record)
                    scheduled, next_run, last_fired = stored.enabled, stored.next_run_at, stored.last_run_at
            except EsfError as exc:
                problems.append(f"schedule store: {exc}")
            last_run = None
            try:
                require_capability(self._context.events(), QueryableEventStore, needed_for="a service task's last run")
                found = self._context.events().query((Q.types(*_RUN_ENDS) & (Q.data("job") == t.name))
                                                     .query(order="desc", limit=_LAST_RUN_SCAN))
                if found:
                    # By the time of the step, not the position: events spooled while the database was
                    # down are stored after newer ones.
                    e = max(found, key=_step_time)
                    last_run = {"type": e.event_type, "at": datetime.fromtimestamp(_step_time(e), UTC).isoformat(),
                                "job_id": e.data.get("job_id"), "runtime_s": e.data.get("runtime_s")}
            except EsfError as exc:
                problems.append(f"job history: {exc}")
            out.append(ServiceTaskStatus(t, scheduled=scheduled, next_run_at=next_run, last_fired_at=last_fired,
                                         last_run=last_run, problems=tuple(problems)))
        return out

    def _describe(self, job: Job[Any, Any], service: str, *, idempotency: str, schedule: DefaultSchedule | None,
                  declared: bool = True) -> ServiceTask:
        o = job.options
        doc = (job.fn.__doc__ or "").strip().splitlines()
        return ServiceTask(
            name=job.name, service=service, queue=o.queue, dlq=dlq_name(o.queue), retries=o.retries,
            backoff_s=o.backoff_s, max_backoff_s=o.max_backoff_s, timeout_s=o.timeout_s,
            retry_on=tuple(c.__name__ for c in o.retry_on), idempotency=idempotency, schedule=schedule,
            declared=declared, description=doc[0] if doc else "",
        )
