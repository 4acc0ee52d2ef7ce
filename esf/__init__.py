"""ESF: durable jobs, schedules, events, configuration and telemetry on Celery.

Start with :class:`Foundation` (``Foundation.from_env()``) and declare jobs
with ``@fnd.job``. Every error ESF raises is an :class:`EsfError` with a
stable ``code``.
"""

from __future__ import annotations

from . import errors
from .errors import (
    ConcurrencyConflict,
    DuplicateEventId,
    EsfError,
    JobFailed,
    NotFound,
    ServiceUnavailable,
    Timeout,
    ValidationError,
)
from .events import Event, EventStore, Q, Query, StoredEvent
from .foundation import Foundation
from .hooks import JobContext, JobHooks
from .jobs import DeadLetter, Job, JobHandle
from .sagas import Saga
from .secrets import Secret
from .settings import Settings
from .sourcing import Aggregate, applies

#: Alias of :class:`EsfError` as the design brief spells it.
ESFError = EsfError

__all__ = [
    # composition
    "Foundation",
    "Settings",
    # jobs
    "DeadLetter",
    "Job",
    "JobContext",
    "JobHandle",
    "JobHooks",
    # events
    "Event",
    "EventStore",
    "Q",
    "Query",
    "StoredEvent",
    # event sourcing
    "Aggregate",
    "Saga",
    "applies",
    # values
    "Secret",
    # errors
    "ConcurrencyConflict",
    "DuplicateEventId",
    "ESFError",
    "EsfError",
    "JobFailed",
    "NotFound",
    "ServiceUnavailable",
    "Timeout",
    "ValidationError",
    "errors",
]

__version__ = "0.1.0"
