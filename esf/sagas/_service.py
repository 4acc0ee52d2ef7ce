"""The saga service (``fnd.sagas``): declarations, transitions, and the operator's verbs.

A transition reads an instance's row, calls one handler of the saga on it,
and writes in one transaction of the event store's database: the row (only if
its version is still the one read: compare-and-set; otherwise it is read again
and the handler called again), one event on the stream ``saga-<name>-<id>``,
the jobs it sends (steps, compensations, timeouts) through the outbox, and the
idempotency-ledger key of the event that caused it.
"""

from __future__ import annotations

import builtins
import copy
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConcurrencyConflict,
    SagaNotActive,
    StepFailed,
    UnknownSaga,
    ValidationError,
)
from ..events._model import Event
from ..hooks import JobHooks
from ._model import (
    ACTIVE,
    ID_RE,
    STATUSES,
    STEP_JOB_PREFIX,
    Saga,
    SagaInstance,
    StepContext,
    check_definition,
    check_state,
    stream_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events._model import StoredEvent
    from ..events._query import Filter
    from ..jobs import DeadLetter, JobService
    from ..lifecycle import ServiceContext
    from ..subscriptions import SubscriptionService
    from . import SagaBackend

log = logging.getLogger("esf.sagas")

#: Name of the saga backend in the ``esf.plugins`` entry-point group.
ENTRY_POINT = "sagas.sqlalchemy"
#: The service task that fires a saga's timeout (on the ``esf.sagas`` queue).
TIMEOUT_JOB = "esf.sagas.timeout"
#: Prefix of each saga's subscription (``saga.<name>``).
SUBSCRIPTION_PREFIX = "saga."


class _Lost(Exception):
    """Another transition of the instance committed first: read it again."""


def step_job_name(saga: str, step: str, *, compensation: bool = False) -> str:
    return f"{STEP_JOB_PREFIX}{saga}.{step}{'.compensate' if compensation else ''}"


def parse_ref(ref: str, name: str | None = None) -> tuple[str, str]:
    """``(name, id)`` from ``saga-<name>-<id>`` (its stream), ``<name>/<id>``, or an id with ``name``.

    Raises:
        ValidationError: none of these forms.
    """
    if name is not None:
        return name, ref
    if isinstance(ref, str) and ref.startswith("saga-") and "-" in ref[5:]:
        n, _, i = ref[5:].partition("-")
        return n, i
    if isinstance(ref, str) and "/" in ref:
        n, _, i = ref.partition("/")
        return n, i
    raise ValidationError(f"{ref!r} names no saga instance: give saga-<name>-<id> or <name>/<id>",
                          errors={"id": "unrecognised"})


class SagaService:
    """Sagas of one deployment (``fnd.sagas``): declare with :meth:`declare` (``@fnd.saga``).

    Parameters:
        context: the settings, the event store (instances, transitions) and the job hooks (a dead-lettered
            step reaches its saga).
        jobs: the jobs service the step jobs are declared in and sent through.
        subscriptions: the subscription service each saga's events arrive through.
    """

    def __init__(self, context: ServiceContext, *, jobs: Callable[[], JobService],
                 subscriptions: Callable[[], SubscriptionService]) -> None:
        self.context = context
        self._jobs = jobs
        self._subscriptions = subscriptions
        self._sagas: dict[str, type[Saga]] = {}
        context.add_hooks(_DeadLetterHooks(self))

    # -- declaring -----------------------------------------------------------------------

    def declare(self, cls: type[Saga]) -> type[Saga]:
        """Declare the saga ``cls``: its subscription ``saga.<name>`` and its step jobs.

        Declare it in the code the workers import too (they run its transitions and steps).

        Raises:
            ValidationError: the class is not a valid saga (every problem is named), a step's job
                options are invalid, or the name is taken.
            UnknownQueue: a step names a queue that is not configured.
        """
        cls = check_definition(cls)
        if cls.name in self._sagas:
            raise ValidationError(f"a saga named {cls.name!r} is already declared", errors={"name": "duplicate"})
        from esf.tasks.sagas import declare_steps

        from ..events._query import Q

        declare_steps(self._jobs(), self, cls)
        start: Filter = Q.type(cls.starts_on)
        if cls.start_filter is not None:
            start = start & cls.start_filter
        flt = start | Q.types(*cls.reactions) if cls.reactions else start
        name = cls.name
        self._subscriptions().subscribe(
            SUBSCRIPTION_PREFIX + name, lambda event: self.on_event(name, event), filter=flt, start=cls.start,
            # A reaction must never overtake the event that starts its instance: events of one
            # correlation id are kept in order; a data key has no partition of its own, so one order.
            partition_by="correlation_id" if cls.correlate_by is None else None,
            queue=self.context.settings.jobs.service_queue("sagas"), retries=10, backoff=0.5, max_backoff=30.0)
        self._sagas[name] = cls
        return cls

    def get_class(self, name: str) -> type[Saga]:
        """The declared saga ``name``. Raises UnknownSaga."""
        try:
            return self._sagas[name]
        except KeyError:
            raise UnknownSaga(f"no saga named {name!r} is declared here (declared: "
                              f"{', '.join(sorted(self._sagas)) or 'none'})") from None

    def declared(self) -> builtins.list[type[Saga]]:
        return [self._sagas[n] for n in sorted(self._sagas)]

    def ensure(self) -> None:
        """Create every declared saga's subscription now (a worker's dispatcher does on its first tick).

        A saga starting ``"now"`` reacts to the events appended after its subscription is created.
        """
        for cls in self.declared():
            self._subscriptions().status(SUBSCRIPTION_PREFIX + cls.name)

    @cached_property
    def backend(self) -> SagaBackend:
        """The saga rows, in the event store's database."""
        from .._plugins import load_plugin

        store = self.context.events()
        store.head()  # migrated before the first use
        backend: SagaBackend = load_plugin(ENTRY_POINT, setting="sagas")(store.engine)  # type: ignore[attr-defined]
        return backend

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str, saga_id: str) -> SagaInstance:
        """The stored instance. Raises UnknownSaga (no such instance)."""
        row = self.backend.get(name, saga_id)
        if row is None:
            raise UnknownSaga(f"no instance {saga_id!r} of saga {name!r}")
        return SagaInstance.from_row(row)

    def list(self, name: str | None = None, *, status: str | None = None, limit: int = 100) -> builtins.list[
            SagaInstance]:
        """Instances, most recently changed first. Raises ValidationError for an unknown status or bad limit."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}, not {status!r}",
                                  errors={"status": "unknown"})
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise ValidationError(f"limit must be 1..10000, not {limit!r}", errors={"limit": "out of range"})
        return [SagaInstance.from_row(r) for r in self.backend.list(name, status, limit)]

    # -- transitions --------------------------------------------------------------------------

    def _transition(self, name: str, saga_id: str, cause: str, decide: Callable[[Saga | None, dict[str, Any]],
                    Saga | None], *, key: str | None = None, details: dict[str, Any] | None = None,
                    correlation_id: str | None = None, read: dict[str, Any] | None = None) -> SagaInstance | None:
        """Read, decide, write by compare-and-set; again when another transition came first.

        ``decide(saga, progress)`` gets the instance (None when it does not exist) and its mutable
        progress, and returns the saga to store or None to change nothing.
        """
        cls = self.get_class(name)
        backend = self.backend
        attempts = self.context.settings.sagas.cas_attempts
        for attempt in range(attempts):
            row = read if attempt == 0 and read is not None else backend.get(name, saga_id)
            if row is None:
                saga, progress, version = None, _new_progress(), 0
            else:
                saga = cls(saga_id, state=row["state"], status=row["status"],
                           correlation_id=row["correlation_id"], version=int(row["version"]))
                progress, version = row["progress"], int(row["version"])
            result = decide(saga, progress)
            if result is None:
                return None
            if result.correlation_id is None:
                result.correlation_id = correlation_id or stream_of(name, saga_id)
            try:
                return self._write(cls, result, progress, version, cause, key=key, details=details or {},
                                   started_at=row["started_at"] if row is not None else None)
            except _Lost:
                # Lost to a concurrent transition: read again after a short random pause, so that
                # contenders spread out instead of colliding again.
                time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
                continue
        raise ConcurrencyConflict(f"saga {name} {saga_id}: {attempts} transitions in a row lost to concurrent "
                                  "ones (sagas.cas_attempts); the cause will be delivered again",
                                  expected=None, actual=None)

    def _write(self, cls: type[Saga], saga: Saga, progress: dict[str, Any], version: int, cause: str, *,
               key: str | None, details: dict[str, Any], started_at: datetime | None) -> SagaInstance | None:
        state = check_state(saga)
        sends = _apply(cls, saga, progress)
        row = {"name": cls.name, "saga_id": saga.id, "version": version + 1, "status": saga.status, "state": state,
               "progress": progress, "correlation_id": saga.correlation_id}
        stream = stream_of(cls.name, saga.id)
        data = {"saga": cls.name, "saga_id": saga.id, "version": version + 1, "status": saga.status, **details,
                "sent": [s["run"] for s in sends if "run" in s],
                "timeouts": sorted(progress["timeouts"])}
        if progress.get("reason"):
            data["reason"] = progress["reason"]
        with self.backend.transaction() as session:
            if key is not None:
                with self._jobs().once(key, session=session) as first:
                    if not first:
                        return None
            if not self.backend.write(session, row, expected_version=version):
                raise _Lost
            self.context.events().append(Event(f"saga.{cause}", data, stream_id=stream,
                                               correlation_id=saga.correlation_id), session=session)
            for send in sends:
                self._send(cls, saga, send, session)
        log.debug("saga %s %s: %s -> %s (v%d)", cls.name, saga.id, cause, saga.status, version + 1)
        now = datetime.now(UTC)
        return SagaInstance.from_row({**row, "started_at": started_at or now, "updated_at": now})

    def _send(self, cls: type[Saga], saga: Saga, send: dict[str, Any], session: Any) -> None:
        if "timeout" in send:
            job = self._jobs().get(TIMEOUT_JOB)
            job.enqueue_with([cls.name, saga.id, send["timeout"], send["token"]], countdown=send["seconds"],
                             correlation_id=saga.correlation_id, session=session)
            return
        run = send["spec"]
        job = self._jobs().get(step_job_name(cls.name, run["step"], compensation=run.get("compensation", False)))
        job.enqueue_with([saga.id, send["run"], run["args"], run["kwargs"]], correlation_id=saga.correlation_id,
                         idempotency_key=run["key"], session=session)

    # -- causes ------------------------------------------------------------------------------------

    def on_event(self, name: str, event: StoredEvent) -> SagaInstance | None:
        """Start an instance (the starting event) or call a reaction (a correlated event); idempotent per event."""
        cls = self.get_class(name)
        if cls.correlate_by is None:
            raw: Any = event.correlation_id
        else:
            raw = event.data.get(cls.correlate_by)
        if isinstance(raw, bool) or not isinstance(raw, str | int) or not ID_RE.match(str(raw)):
            log.warning("saga %s: event %s (%s) carries no usable %s (%r); ignored", name, event.event_id,
                        event.event_type, cls.correlate_by or "correlation id", raw)
            return None
        saga_id = str(raw)
        details = {"event": {"type": event.event_type, "id": event.event_id, "position": event.position}}
        key = f"saga:{name}:event:{event.event_id}"
        if event.event_type == cls.starts_on:
            def start(saga: Saga | None, _progress: dict[str, Any]) -> Saga | None:
                if saga is not None:
                    return None
                saga = cls(saga_id, correlation_id=event.correlation_id)
                saga.on_start(event)
                return saga

            return self._transition(name, saga_id, "started", start, key=key, details=details,
                                    correlation_id=event.correlation_id)
        method = cls.reactions.get(event.event_type)
        if method is None:
            return None

        def react(saga: Saga | None, _progress: dict[str, Any]) -> Saga | None:
            if saga is None or saga.status not in ("running", "stuck"):
                return None
            getattr(saga, method)(event)
            return saga

        return self._transition(name, saga_id, "reacted", react, key=key, details=details)

    def run_step(self, name: str, saga_id: str, run_id: str, args: builtins.list[Any],
                 kwargs: dict[str, Any]) -> dict[str, Any]:
        """The body of a step job: run the step (or compensation) and record its outcome.

        A run the saga no longer waits for (done already, or dropped by an abort) is skipped.
        ``StepFailed`` is recorded as the step's failure; any other exception propagates
        (the job retries, then dead-letters).
        """
        cls = self.get_class(name)
        row = self.backend.get(name, saga_id)
        spec = row["progress"]["pending"].get(run_id) if row is not None else None
        if row is None or spec is None:
            return {"skipped": True}
        step = cls.steps[spec["step"]]
        compensation = bool(spec.get("compensation"))
        fn = step.compensate if compensation else step.fn
        assert fn is not None
        store = self.context.events()
        ctx = StepContext(saga=name, saga_id=saga_id, step=spec["step"], run_id=run_id, key=spec["key"],
                          state=copy.deepcopy(row["state"]), correlation_id=row["correlation_id"],
                          compensation=compensation,
                          _transaction=self.backend.transaction, _once=store.once)
        try:
            result = fn(ctx, *args, **kwargs)
        except StepFailed as exc:
            if compensation:
                raise  # a compensation cannot fail for good: it retries, then waits in the DLQ
            error = f"{type(exc).__name__}: {exc}"[:2000]
            self._transition(name, saga_id, "step_failed", _finished(run_id, None, error),
                             details={"run": run_id, "step": spec["step"], "error": error}, read=row)
            return {"failed": error}
        from .._json import check_json

        check_json(result, f"the result of step {spec['step']}")
        cause = "compensated_step" if compensation else "step_completed"
        self._transition(name, saga_id, cause, _finished(run_id, result, None),
                         details={"run": run_id, "step": spec["step"]}, read=row)
        return {"done": run_id}

    def fire_timeout(self, name: str, saga_id: str, timeout: str, token: str) -> bool:
        """The body of ``esf.sagas.timeout``: call ``on_timeout`` unless the timeout was cancelled or reset."""

        def fire(saga: Saga | None, progress: dict[str, Any]) -> Saga | None:
            if saga is None or saga.status not in ("running", "stuck") or progress["timeouts"].get(timeout) != token:
                return None
            del progress["timeouts"][timeout]
            saga.on_timeout(timeout)
            return saga

        return self._transition(name, saga_id, "timed_out", fire, details={"timeout": timeout}) is not None

    def dead_lettered(self, entry: DeadLetter) -> None:
        """A step job went to the DLQ: the saga waits, ``stuck``, until it is replayed, retried or aborted."""
        parts = entry.job[len(STEP_JOB_PREFIX):].split(".")
        if len(parts) < 2 or parts[0] not in self._sagas or len(entry.args) < 2:
            return
        name, saga_id, run_id = parts[0], str(entry.args[0]), str(entry.args[1])
        error = f"{entry.exception_type}: {entry.exception_message}"[:2000]

        def stuck(saga: Saga | None, progress: dict[str, Any]) -> Saga | None:
            if saga is None or run_id not in progress["pending"] or saga.status not in ACTIVE:
                return None
            progress["stuck"][run_id] = error
            if saga.status != "stuck":
                progress["resume"] = saga.status
                saga.status = "stuck"
            return saga

        self._transition(name, saga_id, "stuck", stuck, details={"run": run_id, "error": error,
                                                                  "dlq_entry": entry.id})
        log.warning("saga %s %s is stuck: %s dead-lettered (%s)", name, saga_id, run_id, error)

    # -- the operator's verbs ---------------------------------------------------------------------

    def retry(self, name: str, saga_id: str) -> SagaInstance:
        """Send the stuck runs of a stuck instance again (their DLQ entries then become no-ops when replayed).

        Raises:
            UnknownSaga: no such saga or instance.
            SagaNotActive: the instance is not stuck.
        """
        self.get(name, saga_id)

        def retry(saga: Saga | None, progress: dict[str, Any]) -> Saga | None:
            if saga is None or saga.status != "stuck":
                raise SagaNotActive(f"saga {name} {saga_id} is {saga.status if saga else 'gone'}, not stuck")
            progress["resend"] = sorted(progress["stuck"])
            progress["stuck"] = {}
            saga.status = progress.pop("resume", "running")
            return saga

        out = self._transition(name, saga_id, "retried", retry)
        assert out is not None
        return out

    def abort(self, name: str, saga_id: str, reason: str = "aborted") -> SagaInstance:
        """End an active instance: its completed steps are compensated (newest first), then it is ``aborted``.

        Raises:
            UnknownSaga: no such saga or instance.
            SagaNotActive: the instance has ended already.
        """
        self.get(name, saga_id)

        def abort(saga: Saga | None, progress: dict[str, Any]) -> Saga | None:
            if saga is None or saga.status not in ACTIVE:
                raise SagaNotActive(f"saga {name} {saga_id} is {saga.status if saga else 'gone'}; "
                                    "only running, stuck or compensating sagas can be aborted")
            for run_id in progress["stuck"]:
                progress["pending"].pop(run_id, None)
            progress["stuck"] = {}
            progress.pop("resume", None)
            saga.status = "running" if saga.status == "stuck" else saga.status
            saga.fail(reason)
            saga._ending = "aborted"
            return saga

        out = self._transition(name, saga_id, "aborted", abort, details={"reason": reason})
        assert out is not None
        return out


def _new_progress() -> dict[str, Any]:
    return {"pending": {}, "stuck": {}, "done": [], "counts": {}, "timeouts": {}, "reason": None}


def _finished(run_id: str, result: Any, error: str | None) -> Callable[[Saga | None, dict[str, Any]], Saga | None]:
    """The transition of a run that returned ``result`` or failed with ``error`` (StepFailed)."""

    def decide(saga: Saga | None, progress: dict[str, Any]) -> Saga | None:
        if saga is None or run_id not in progress["pending"]:
            return None  # a redelivered or dropped run
        spec = progress["pending"].pop(run_id)
        if progress["stuck"].pop(run_id, None) is not None and not progress["stuck"]:
            saga.status = progress.pop("resume", "running")
        if spec.get("compensation"):
            return saga
        step = type(saga).steps[spec["step"]]
        if error is None and step.compensate is not None:
            progress["done"].append({"run": run_id, "step": spec["step"], "args": spec["args"],
                                     "kwargs": spec["kwargs"], "key": spec["key"]})
        if saga.status in ("running", "stuck"):
            if error is None:
                saga.on_step_done(spec["step"], result)
            else:
                saga.on_step_failed(spec["step"], error)
        return saga

    return decide


def _apply(cls: type[Saga], saga: Saga, progress: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply the commands the handler gave to ``progress`` and ``saga.status``; the jobs to send."""
    sends: list[dict[str, Any]] = []
    for run_id in progress.pop("resend", []):
        spec = progress["pending"].get(run_id)
        if spec is not None:
            sends.append({"run": run_id, "spec": spec})
    if saga._ending is not None and saga.status in ("running", "stuck"):
        progress["timeouts"] = {}
        if saga._ending == "completed":
            saga.status = "completed"
        else:
            progress["reason"] = saga._reason
            progress["ending"] = "compensated"
            saga.status = "compensating"
            for run_id in list(progress["stuck"]):
                progress["pending"].pop(run_id, None)
            progress["stuck"] = {}
            progress.pop("resume", None)
    if saga._ending == "aborted":
        progress["ending"] = "aborted"
    if saga.status in ("running", "stuck"):
        for step_name, args, kwargs in saga._runs:
            n = progress["counts"].get(step_name, 0) + 1
            progress["counts"][step_name] = n
            run_id = f"{step_name}:{n}"
            spec = {"step": step_name, "args": list(args), "kwargs": dict(kwargs),
                    "key": f"saga:{cls.name}:{saga.id}:{run_id}"}
            progress["pending"][run_id] = spec
            sends.append({"run": run_id, "spec": spec})
        for name, seconds in saga._timeouts.items():
            if seconds is None:
                progress["timeouts"].pop(name, None)
            else:
                token = uuid.uuid4().hex
                progress["timeouts"][name] = token
                sends.append({"timeout": name, "token": token, "seconds": seconds})
    if saga.status == "compensating":
        # Steps still running finish first (their compensation joins the list); one compensation at a time.
        if not progress["pending"]:
            if progress["done"]:
                done = progress["done"].pop()
                run_id = f"{done['run']}:compensate"
                spec = {"step": done["step"], "args": done["args"], "kwargs": done["kwargs"],
                        "key": f"{done['key']}:compensate", "compensation": True}
                progress["pending"][run_id] = spec
                sends.append({"run": run_id, "spec": spec})
            else:
                saga.status = progress.pop("ending", "compensated")
    saga._runs, saga._timeouts = [], {}
    return sends


class _DeadLetterHooks(JobHooks):
    """Tells the saga service when one of its step jobs is dead-lettered."""

    def __init__(self, service: SagaService) -> None:
        self._service = service

    def after_dead_letter(self, entry: DeadLetter) -> None:
        if entry.job.startswith(STEP_JOB_PREFIX):
            self._service.dead_lettered(entry)
