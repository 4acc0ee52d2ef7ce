"""Jobs: declaring, enqueueing, retrying and dead-lettering work on Celery."""

from __future__ import annotations

from ._coord import Coordinator, RedisCoordinator, SqliteCoordinator
from ._deadletter import DeadLetter, DeadLetterPage, DeadLetterQueues, dlq_name
from ._dlq_stores import DeadLetterStore, KombuDeadLetterStore, RedisDeadLetterStore
from ._gather import Gather
from ._job import Job, JobHandle, JobStatus
from ._options import JobOptions, RateLimit
from ._service import JobService, Workflow

__all__ = [
    "Coordinator",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterQueues",
    "DeadLetterStore",
    "Gather",
    "Job",
    "JobHandle",
    "JobOptions",
    "JobService",
    "JobStatus",
    "KombuDeadLetterStore",
    "RateLimit",
    "RedisCoordinator",
    "RedisDeadLetterStore",
    "SqliteCoordinator",
    "Workflow",
    "dlq_name",
]
