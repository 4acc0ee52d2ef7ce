"""The saga declaration: the :class:`Saga` base class, its steps and reactions, and the stored instance."""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .._json import check_json
from ..errors import SerializationError, ValidationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..events._model import StoredEvent
    from ..events._query import Filter

#: A saga's name: lower-case letters, digits and ``_`` (it is part of stream and job names).
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
#: A saga instance's id (the correlation key's value): the characters a stream id allows.
ID_RE = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_.:@/+=$\-]{0,149}$")
#: Prefix of the step jobs, ``esf.saga.<saga>.<step>`` (and ``….compensate``).
STEP_JOB_PREFIX = "esf.saga."

Status = Literal["running", "stuck", "compensating", "completed", "compensated", "aborted"]
#: Every status, in lifecycle order.
STATUSES: tuple[str, ...] = ("running", "stuck", "compensating", "completed", "compensated", "aborted")
#: Statuses of an instance that still reacts, runs steps or compensates.
ACTIVE: frozenset[str] = frozenset({"running", "stuck", "compensating"})


def stream_of(name: str, saga_id: str) -> str:
    """The stream of an instance's transitions: ``saga-<name>-<id>``."""
    return f"saga-{name}-{saga_id}"


@dataclass(frozen=True)
class SagaStep:
    """A step of a saga: a function run as an ESF job, and the job that undoes it.

    Declared in the saga's class body with :func:`step`; its name is the attribute's.
    ``fn(ctx, *args, **kwargs)`` returns a JSON value (given to ``on_step_done``);
    ``compensate(ctx, *args, **kwargs)`` gets the same arguments.
    """

    fn: Callable[..., Any]
    compensate: Callable[..., Any] | None = None
    queue: str | None = None
    retries: int | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    timeout: float | None = None
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)


def step(fn: Callable[..., Any], *, compensate: Callable[..., Any] | None = None, queue: str | None = None,
         retries: int | None = None, backoff: float | None = None, max_backoff: float | None = None,
         timeout: float | None = None) -> SagaStep:
    """Declare a step in a saga's class body: ``reserve = step(reserve_stock, compensate=release_stock)``.

    The step runs as the job ``esf.saga.<saga>.<step>`` on ``queue`` (default ``sagas.step_queue``
    or ``jobs.default_queue``) with these job options; its compensation as ``….compensate``.
    Raising :class:`~esf.errors.StepFailed` fails the step for good (the saga compensates); any
    other exception is retried and, once the retries are spent, dead-letters the job and the
    saga waits, ``stuck``, until the entry is replayed or the saga retried or aborted.
    """
    return SagaStep(fn=fn, compensate=compensate, queue=queue, retries=retries, backoff=backoff,
                    max_backoff=max_backoff, timeout=timeout)


def reacts(*event_types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a saga method as the reaction to ``event_types`` (correlated events of a running instance)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._esf_reacts = tuple(event_types)  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass
class StepRun:
    """One run of a step (or of its compensation) that the saga waits for."""

    step: str
    args: list[Any]
    kwargs: dict[str, Any]
    key: str
    compensation: bool = False


class Saga:
    """Base class of a saga (a process manager). Subclass it and declare it with ``fnd.saga(Cls)``.

    Class attributes:
        name: the saga's name (``^[a-z][a-z0-9_]{0,49}$``).
        starts_on: the event type that starts an instance.
        start_filter: an ``esf.Q`` filter the starting event must also match (``None``: any).
        correlate_by: the key in the events' data whose value is the instance id (``None``: the
            events' correlation id). Later events with the same value reach the same instance.
        start: where the saga's subscription starts when first created: ``"now"`` (default),
            ``"beginning"`` or a position.

    Handlers (called in a transition; they change ``self.state`` and call the commands):
        ``on_start(event)`` (required), methods marked ``@reacts("type")``, ``on_step_done(step, result)``,
        ``on_step_failed(step, error)`` (default: :meth:`fail`), ``on_timeout(name)`` (default: :meth:`fail`).

    Commands: :meth:`run`, :meth:`set_timeout`, :meth:`cancel_timeout`, :meth:`complete`, :meth:`fail`.
    """

    name: ClassVar[str] = ""
    starts_on: ClassVar[str] = ""
    start_filter: ClassVar[Filter | None] = None
    correlate_by: ClassVar[str | None] = None
    start: ClassVar[str | int] = "now"

    steps: ClassVar[dict[str, SagaStep]] = {}
    reactions: ClassVar[dict[str, str]] = {}

    def __init__(self, saga_id: str, *, state: dict[str, Any] | None = None, status: str = "running",
                 correlation_id: str | None = None, version: int = 0) -> None:
        self.id = saga_id
        #: The instance's own data: JSON, stored with every transition.
        self.state: dict[str, Any] = state if state is not None else {}
        self.status = status
        self.correlation_id = correlation_id
        self.version = version
        self._runs: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._timeouts: dict[str, float | None] = {}
        self._ending: str | None = None
        self._reason: str | None = None

    # -- handlers ------------------------------------------------------------------

    def on_start(self, event: StoredEvent) -> None:
        """The starting event arrived: set up ``self.state`` and run the first step."""
        raise NotImplementedError

    def on_step_done(self, step: str, result: Any) -> None:
        """A step finished with ``result``: run the next one, or :meth:`complete`."""

    def on_step_failed(self, step: str, error: str) -> None:
        """A step raised ``StepFailed``; by default the saga fails and compensates."""
        self.fail(f"step {step} failed: {error}")

    def on_timeout(self, name: str) -> None:
        """The timeout ``name`` expired (it was not cancelled); by default the saga fails and compensates."""
        self.fail(f"timeout {name} expired")

    # -- commands ------------------------------------------------------------------

    def run(self, step: str | SagaStep, *args: Any, **kwargs: Any) -> None:
        """Run ``step`` (its name or the attribute) with these JSON arguments once this transition commits.

        Raises:
            ValidationError: no such step.
            SerializationError: an argument is not JSON.
        """
        name = step.name if isinstance(step, SagaStep) else step
        if name not in type(self).steps:
            raise ValidationError(f"saga {type(self).name}: no step named {name!r} (steps: "
                                  f"{', '.join(sorted(type(self).steps)) or 'none'})", errors={"step": "unknown"})
        check_json([list(args), kwargs], f"the arguments of step {name}")
        self._runs.append((name, args, kwargs))

    def set_timeout(self, name: str, seconds: float) -> None:
        """Call ``on_timeout(name)`` after ``seconds`` unless cancelled (setting it again restarts it).

        Raises:
            ValidationError: an empty name or a delay not > 0.
        """
        if not isinstance(name, str) or not name:
            raise ValidationError("set_timeout: the name must be a non-empty string", errors={"name": "empty"})
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds)
                or seconds <= 0):
            raise ValidationError(f"set_timeout: seconds must be > 0, got {seconds!r}", errors={"seconds": "> 0"})
        self._timeouts[name] = float(seconds)

    def cancel_timeout(self, name: str) -> None:
        """Forget the timeout ``name`` (a no-op when none is set)."""
        self._timeouts[name] = None

    def complete(self) -> None:
        """End the saga successfully (its timeouts are cancelled; steps still running are not waited for)."""
        self._ending = "completed"

    def fail(self, reason: str) -> None:
        """End the saga by compensating its completed steps, newest first (after the running ones finish)."""
        self._ending = "compensated"
        self._reason = str(reason)[:2000]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status} v{self.version}>"


def check_definition(cls: Any) -> type[Saga]:
    """Check a saga class and collect its steps and reactions. Raises ValidationError naming every problem."""
    errors: dict[str, str] = {}
    if not (isinstance(cls, type) and issubclass(cls, Saga)) or cls is Saga:
        raise ValidationError(f"fnd.saga() takes a subclass of esf.sagas.Saga, not {cls!r}",
                              errors={"saga": "not a Saga subclass"})
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        errors["name"] = f"{cls.name!r} must match {NAME_RE.pattern}"
    if not isinstance(cls.starts_on, str) or not cls.starts_on:
        errors["starts_on"] = "the event type that starts an instance is required"
    if cls.correlate_by is not None and (not isinstance(cls.correlate_by, str) or not cls.correlate_by):
        errors["correlate_by"] = "a key of the events' data, or None for the correlation id"
    if cls.on_start is Saga.on_start:
        errors["on_start"] = "define on_start(self, event)"
    start = cls.start
    if not (start in ("now", "beginning") or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)):
        errors["start"] = f"'now', 'beginning' or a position >= 0, not {start!r}"
    steps: dict[str, SagaStep] = {}
    reactions: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, SagaStep):
                steps[attr] = value
                if not callable(value.fn) or (value.compensate is not None and not callable(value.compensate)):
                    errors[f"steps.{attr}"] = "the step and its compensation must be functions"
                elif not re.match(r"^[a-z][a-z0-9_]{0,49}$", attr):
                    errors[f"steps.{attr}"] = "a step's name must be a lower-case identifier"
            fn = value if inspect.isfunction(value) else None
            for event_type in getattr(fn, "_esf_reacts", ()):
                if not isinstance(event_type, str) or not event_type:
                    errors[f"reactions.{attr}"] = "event types must be non-empty strings"
                elif event_type == cls.starts_on:
                    errors[f"reactions.{attr}"] = f"{event_type!r} starts the saga; it cannot also be a reaction"
                else:
                    reactions[event_type] = attr
    if errors:
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise ValidationError(f"saga {getattr(cls, '__name__', cls)!r} is not a valid definition: {detail}",
                              errors=errors)
    cls.steps = steps
    cls.reactions = reactions
    return cls


def check_state(saga: Saga) -> dict[str, Any]:
    """The saga's state, checked to be a JSON object. Raises SerializationError."""
    if not isinstance(saga.state, dict):
        raise SerializationError(f"saga {type(saga).name} {saga.id}: state must be a dict, not "
                                 f"{type(saga.state).__name__}")
    check_json(saga.state, f"the state of saga {type(saga).name} {saga.id}")
    return copy.deepcopy(saga.state)


@dataclass(frozen=True)
class SagaInstance:
    """A stored saga instance, as ``fnd.sagas.get`` / ``list`` return it.

    ``pending`` maps the runs the saga waits for (``<step>:<n>``, ``…:compensate``) to their step;
    ``stuck`` maps the dead-lettered ones to their error; ``completed`` lists the completed steps
    that have a compensation, oldest first.
    """

    name: str
    saga_id: str
    status: str
    version: int
    state: dict[str, Any]
    correlation_id: str | None
    started_at: datetime
    updated_at: datetime
    pending: dict[str, str] = field(default_factory=dict)
    stuck: dict[str, str] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def stream_id(self) -> str:
        return stream_of(self.name, self.saga_id)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SagaInstance:
        progress = row["progress"]
        return cls(
            name=row["name"], saga_id=row["saga_id"], status=row["status"], version=int(row["version"]),
            state=dict(row["state"]), correlation_id=row.get("correlation_id"), started_at=row["started_at"],
            updated_at=row["updated_at"],
            pending={k: v["step"] for k, v in progress.get("pending", {}).items()},
            stuck=dict(progress.get("stuck", {})),
            completed=[d["step"] for d in progress.get("done", [])],
            timeouts=sorted(progress.get("timeouts", {})), reason=progress.get("reason"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "saga_id": self.saga_id, "stream_id": self.stream_id, "status": self.status,
                "version": self.version, "state": self.state, "correlation_id": self.correlation_id,
                "started_at": self.started_at.isoformat(), "updated_at": self.updated_at.isoformat(),
                "pending": self.pending, "stuck": self.stuck, "completed": self.completed,
                "timeouts": self.timeouts, "reason": self.reason}


@dataclass
class Effect:
    """What :meth:`StepContext.once` yields: the session of the step's transaction and whether it runs first."""

    session: Session
    first: bool


@dataclass(frozen=True)
class StepContext:
    """What a step (or compensation) function gets first: where it runs and its idempotency key.

    ``key`` is stable across redeliveries, retries and replays of this run
    (``saga:<name>:<id>:<step>:<n>``, ``…:compensate``); :meth:`once` records it
    in the idempotency ledger in the transaction of the step's own writes.
    """

    saga: str
    saga_id: str
    step: str
    run_id: str
    key: str
    state: dict[str, Any]
    correlation_id: str | None
    compensation: bool
    _transaction: Callable[[], Any] = field(repr=False, compare=False)
    _once: Callable[..., Any] = field(repr=False, compare=False)

    @contextmanager
    def once(self) -> Iterator[Effect]:
        """A write transaction of the event store's database holding this run's ledger key.

        ``with ctx.once() as tx:`` then ``if tx.first: tx.session.execute(...)``: the writes and the
        key commit together when the block exits, so a redelivered run skips what was committed.
        """
        with self._transaction() as session, self._once(self.key, session=session) as first:
            yield Effect(session, first)
