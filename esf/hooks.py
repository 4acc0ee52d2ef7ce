"""Job lifecycle hooks.

Subclass :class:`JobHooks`, override the methods you need and register an
instance with ``Foundation.add_hooks``. ``before_*`` hooks run in
registration order, ``after_*`` hooks in reverse order. An exception raised
by a hook is logged and ignored, except :class:`~esf.errors.HookError`, which
aborts the operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import DeadLetter


@dataclass(frozen=True)
class JobContext:
    """What ESF knows about one attempt of one job."""

    job_id: str
    job_name: str
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    idempotency_key: str | None = None
    #: 1 for the first attempt, 2 for the first retry, …
    attempt: int = 1
    #: Unix time (seconds) when the job was enqueued.
    enqueued_at: float | None = None
    #: Unix time (seconds) when this attempt started running (None before).
    started_at: float | None = None
    parent_id: str | None = None


class JobHooks:
    """No-op lifecycle hooks; override what you need. One line per hook is enough."""

    #: Task options this hook understands (checked when a job is declared).
    accepted_options: frozenset[str] = frozenset()

    def before_enqueue(self, ctx: JobContext) -> None:
        """Called before a job message is sent."""

    def after_enqueue(self, ctx: JobContext) -> None:
        """Called after a job message was sent."""

    def before_process(self, ctx: JobContext) -> None:
        """Called in the worker before the handler runs."""

    def after_process(self, ctx: JobContext, *, result: Any = None, exc: BaseException | None = None,
                      runtime_s: float = 0.0) -> None:
        """Called in the worker after the handler returned (``exc`` is None) or raised."""

    def after_retry(self, ctx: JobContext, *, exc: BaseException, delay_s: float) -> None:
        """Called when a failed attempt is scheduled again after ``delay_s`` seconds."""

    def after_dead_letter(self, entry: DeadLetter) -> None:
        """Called when a job was moved to its queue's dead-letter queue."""

    def after_replay(self, entry: DeadLetter, *, job_id: str) -> None:
        """Called when a dead-lettered job was sent back to its queue."""
