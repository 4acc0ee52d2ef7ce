"""The whole ESF exception tree.

Every class carries a stable ``code`` (a short string that never changes once
released) so that callers, other processes and other languages can tell
failures apart without relying on class paths::

    EsfError                         esf_error
    ├── ValidationError              validation_failed
    │   ├── SettingsError            invalid_settings
    │   ├── SerializationError       not_json
    │   ├── PayloadTooLarge          payload_too_large
    │   └── QueryError               invalid_query
    ├── NotFound                     not_found
    │   ├── UnknownJob               unknown_job
    │   ├── UnknownQueue             unknown_queue
    │   └── SecretNotFound           secret_not_found
    │   └── UnknownSubscription      unknown_subscription
    │   └── UnknownSaga              unknown_saga
    ├── Conflict                     conflict
    │   ├── DuplicateEventId         duplicate_event_id
    │   └── ConcurrencyConflict      concurrency_conflict
    │   └── SagaNotActive            saga_not_active
    ├── PermissionDenied             permission_denied
    ├── ServiceUnavailable           service_unavailable
    │   ├── CircuitOpen              circuit_open
    │   └── BatchNotSent             batch_not_sent
    ├── Timeout                      timeout
    ├── SpoolQuarantined             spool_quarantined
    ├── JobFailed                    job_failed
    ├── StepFailed                   step_failed
    ├── HookError                    hook_error
    ├── MissingDependency            missing_dependency
    ├── UnsupportedCapability        unsupported_capability
    └── JobControl                   (control flow inside a job handler)
        ├── Retry                    retry
        └── SkipJob                  skip_job

Messages say what was wrong and what to do about it. They never contain
secret values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BatchNotSent",
    "CircuitOpen",
    "ConcurrencyConflict",
    "Conflict",
    "DuplicateEventId",
    "EsfError",
    "HookError",
    "JobControl",
    "JobFailed",
    "MissingDependency",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QueryError",
    "Retry",
    "SecretNotFound",
    "SerializationError",
    "ServiceUnavailable",
    "SettingsError",
    "SkipJob",
    "SagaNotActive",
    "SpoolQuarantined",
    "StepFailed",
    "Timeout",
    "UnknownJob",
    "UnknownQueue",
    "UnknownSaga",
    "UnknownSubscription",
    "UnsupportedCapability",
    "ValidationError",
    "error_from_code",
]


class EsfError(Exception):
    """Base class of every error ESF raises on purpose."""

    code: str = "esf_error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message
        self.details: dict[str, Any] = dict(details)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description: ``code``, ``type`` and ``message``."""
        return {"code": self.code, "type": type(self).__name__, "message": str(self)}


class ValidationError(EsfError):
    """Input was rejected before anything was sent or written."""

    code = "validation_failed"

    def __init__(self, message: str, *, errors: Mapping[str, str] | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        #: Problems keyed by the path, field or argument they concern.
        self.errors: dict[str, str] = dict(errors or {})


class SettingsError(ValidationError):
    """A setting is missing or invalid; the message names it."""

    code = "invalid_settings"


class SerializationError(ValidationError):
    """A value cannot be carried as JSON."""

    code = "not_json"


class PayloadTooLarge(ValidationError):
    """A payload exceeds its configured size limit."""

    code = "payload_too_large"


class QueryError(ValidationError):
    """A query, field path or operator is not valid."""

    code = "invalid_query"


class NotFound(EsfError):
    """The named thing does not exist."""

    code = "not_found"


class UnknownJob(NotFound):
    """No job is registered under that name."""

    code = "unknown_job"


class UnknownQueue(NotFound):
    """The queue is not one of the configured queues."""

    code = "unknown_queue"


class SecretNotFound(NotFound):
    """No secret (or no such key or version of it) exists at that path."""

    code = "secret_not_found"
class UnknownSubscription(NotFound):
    """No subscription or projection has that name."""

    code = "unknown_subscription"


class UnknownSaga(NotFound):
    """No saga of that name is declared, or no instance of it has that id."""

    code = "unknown_saga"


class Conflict(EsfError):
    """The operation conflicts with the current state."""

    code = "conflict"


class DuplicateEventId(Conflict):
    """An event id is already stored with different content."""

    code = "duplicate_event_id"


class ConcurrencyConflict(Conflict):
    """The expected version did not match the actual version."""

    code = "concurrency_conflict"

    def __init__(self, message: str, *, expected: Any = None, actual: Any = None, **details: Any) -> None:
        super().__init__(message, expected=expected, actual=actual, **details)
        self.expected = expected
        self.actual = actual


class SagaNotActive(Conflict):
    """The saga instance has ended (completed, compensated or aborted): it cannot be retried or aborted."""

    code = "saga_not_active"


class PermissionDenied(EsfError):
    """The caller may not perform this operation (for example a read-only path)."""

    code = "permission_denied"


class ServiceUnavailable(EsfError):
    """A server or service ESF depends on cannot be reached."""

    code = "service_unavailable"


class CircuitOpen(ServiceUnavailable):
    """A circuit breaker is open: calls fail fast until it half-opens."""

    code = "circuit_open"


class BatchNotSent(ServiceUnavailable):
    """Part of a batch of jobs did not reach the broker (``Job.enqueue_many``).

    ``details`` lists job ids: ``sent`` (confirmed by the broker: they will run),
    ``uncertain`` (they may or may not have been queued), ``refused`` (refused by the
    broker) and ``not_sent`` (never published).
    """

    code = "batch_not_sent"


class Timeout(EsfError):
    """An operation did not complete within its timeout."""

    code = "timeout"


class SpoolQuarantined(EsfError):
    """Spooled events kept failing to be written and were set aside in the spool's quarantine.

    They are kept, not written; ``esf events spool retry`` puts them back. ``details["spool_id"]`` is the entry.
    """

    code = "spool_quarantined"


class JobFailed(EsfError):
    """A job ended in failure; ``remote_type`` and ``remote_message`` describe why."""

    code = "job_failed"

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        remote_type: str | None = None,
        remote_message: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, job_id=job_id, remote_type=remote_type, **details)
        self.job_id = job_id
        self.remote_type = remote_type
        self.remote_message = remote_message


class StepFailed(EsfError):
    """Raised by a saga step to say it failed for good: no retry, the saga compensates its completed steps."""

    code = "step_failed"


class HookError(EsfError):
    """Raised by a hook to abort the operation; other hook exceptions are only logged."""

    code = "hook_error"


class MissingDependency(EsfError):
    """An optional dependency is not installed; the message says which extra to install."""

    code = "missing_dependency"


class UnsupportedCapability(EsfError):
    """The backend in use lacks a capability tier the operation needs (``.capability``, ``.backend``).

    For example a bare event recorder (append and read only) asked for a query or
    the idempotency ledger. Choose a backend that implements the tier, or do
    without the operation.
    """

    code = "unsupported_capability"

    def __init__(self, message: str, *, capability: str | None = None, backend: str | None = None,
                 **details: Any) -> None:
        super().__init__(message, capability=capability, backend=backend, **details)
        self.capability = capability
        self.backend = backend


class JobControl(EsfError):
    """Control flow raised inside a job handler; never a failure in itself."""

    code = "job_control"


class Retry(JobControl):
    """Ask for the job to be retried, optionally after ``delay`` seconds."""

    code = "retry"

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.delay = delay


class SkipJob(JobControl):
    """Finish the job now without running the rest of the handler; counts as success."""

    code = "skip_job"


_BY_CODE: dict[str, type[EsfError]] = {}


def _index(cls: type[EsfError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(EsfError)


def error_from_code(code: str, message: str, **details: Any) -> EsfError:
    """Rebuild an error of the class registered for ``code`` (``EsfError`` when unknown)."""
    cls = _BY_CODE.get(code, EsfError)
    try:
        return cls(message, **details)
    except TypeError:
        return EsfError(message, code=code)


def describe_errors(errors: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """Join ``path: problem`` pairs into one readable sentence."""
    items = errors.items() if isinstance(errors, Mapping) else errors
    return "; ".join(f"{path}: {problem}" for path, problem in items)
