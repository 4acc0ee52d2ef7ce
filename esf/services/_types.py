"""Value types of the service-task registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ValidationError


@dataclass(frozen=True)
class DefaultSchedule:
    """The schedule ``esf beat`` runs a service task on unless settings switch it off.

    Parameters:
        every_s: seconds between two runs (> 0); give ``every_s`` or ``cron``.
        cron: a 5-field crontab (UTC).
        enabled: False when settings switch it off (beat then removes it from the schedule store).
        setting: the setting that switches it (shown by ``esf services``), e.g. ``services.events_prune``.

    Raises:
        ValidationError: neither or both of ``every_s`` and ``cron``, or ``every_s`` not > 0.
    """

    every_s: float | None = None
    cron: str | None = None
    enabled: bool = True
    setting: str | None = None

    def __post_init__(self) -> None:
        if (self.every_s is None) == (self.cron is None):
            raise ValidationError("a default schedule needs exactly one of every_s or cron",
                                  errors={"schedule": "give every_s or cron"})
        if self.every_s is not None and (isinstance(self.every_s, bool) or not isinstance(self.every_s, int | float)
                                         or not math.isfinite(self.every_s) or self.every_s <= 0):
            raise ValidationError(f"schedule every_s: must be seconds > 0, got {self.every_s!r}",
                                  errors={"every_s": "must be > 0"})

    def describe(self) -> str:
        """``every 60s`` or ``cron */5 * * * *``."""
        return f"every {self.every_s:g}s" if self.every_s is not None else f"cron {self.cron}"


@dataclass(frozen=True)
class ServiceTask:
    """One routed task of a foundation service.

    Parameters:
        name: ``esf.<service>.<verb>`` (also the job's and its default schedule's name).
        service: the service (``events``, ``config`` …).
        queue: its routed queue (``esf.<service>`` under the configured namespace).
        dlq: the queue's dead-letter queue.
        retries, backoff_s, max_backoff_s, timeout_s: its retry policy and soft time limit (seconds).
        retry_on: names of the exceptions it retries; any other is dead-lettered at once.
        idempotency: why running it twice is safe (at-least-once delivery runs it twice sometimes).
        schedule: its default schedule, if any.
        declared: True when declared through the registry; False for a job found on a service queue.
        description: first line of the task's docstring.
    """

    name: str
    service: str
    queue: str
    dlq: str
    retries: int
    backoff_s: float
    max_backoff_s: float
    timeout_s: float
    retry_on: tuple[str, ...]
    idempotency: str = ""
    schedule: DefaultSchedule | None = None
    declared: bool = True
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``esf services --json``)."""
        return {
            "name": self.name,
            "service": self.service,
            "queue": self.queue,
            "dlq": self.dlq,
            "retries": self.retries,
            "backoff_s": self.backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "timeout_s": self.timeout_s,
            "retry_on": list(self.retry_on),
            "idempotency": self.idempotency,
            "schedule": None if self.schedule is None else {
                "every_s": self.schedule.every_s, "cron": self.schedule.cron,
                "enabled": self.schedule.enabled, "setting": self.schedule.setting,
            },
            "declared": self.declared,
            "description": self.description,
        }


@dataclass(frozen=True)
class ServiceTaskStatus:
    """A service task with what is known of its runs.

    Parameters:
        task: the declaration.
        scheduled: its schedule is in the schedule store and enabled (``esf beat`` fires it).
        next_run_at, last_fired_at: the schedule's run state (UTC), if scheduled.
        last_run: the newest ``job.succeeded``/``job.failed`` event of the task (``type``, ``at``,
            ``job_id``, ``runtime_s``), or None when none is recorded.
        problems: what could not be read (a store down), so a partial answer says so.
    """

    task: ServiceTask
    scheduled: bool = False
    next_run_at: datetime | None = None
    last_fired_at: datetime | None = None
    last_run: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``esf services --json``)."""
        out = self.task.to_dict()
        out.update(
            scheduled=self.scheduled,
            next_run_at=self.next_run_at.isoformat() if self.next_run_at else None,
            last_fired_at=self.last_fired_at.isoformat() if self.last_fired_at else None,
            last_run=self.last_run,
            problems=list(self.problems),
        )
        return out
