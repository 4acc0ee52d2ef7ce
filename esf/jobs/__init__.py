"""Jobs: declaring, enqueueing, retrying and dead-lettering work on Celery."""

from __future__ import annotations

from ._coord import Coordinator, RedisCoordinator, SqliteCoordinator
from ._deadletter import DeadLetter, DeadLetterQueues, dlq_name
from ._job import Job, JobHandle, JobStatus
from ._options import JobOptions, RateLimit
from ._service import JobService, Workflow

__all__ = [
    "Coordinator",
    "DeadLetter",
    "DeadLetterQueues",
    "Job",
    "JobHandle",
    "JobOptions",
    "JobService",
    "JobStatus",
    "RateLimit",
    "RedisCoordinator",
    "SqliteCoordinator",
    "Workflow",
    "dlq_name",
]
