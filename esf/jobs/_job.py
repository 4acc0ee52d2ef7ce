"""Declared jobs and the handles ``enqueue`` returns."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from .._ids import new_id, new_ids
from .._json import check_json, check_size, dumps
from ..errors import JobFailed, Timeout, UnknownQueue, ValidationError
from ..hooks import JobContext
from ._meta import JobMeta, current_flags, current_job
from ._options import JobOptions

if TYPE_CHECKING:
    from celery.canvas import Signature
    from sqlalchemy.orm import Session

    from ._service import JobService
    from ._task import EsfTask

P = ParamSpec("P")
R = TypeVar("R")

JobStatus = Literal["pending", "running", "retrying", "succeeded", "failed", "revoked", "unknown"]

_STATES: dict[str, JobStatus] = {
    "PENDING": "pending",
    "RECEIVED": "pending",
    "STARTED": "running",
    "RETRY": "retrying",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "REVOKED": "revoked",
}

#: Keyword arguments of ``enqueue`` that are options, not job arguments.
ENQUEUE_OPTIONS = frozenset({"correlation_id", "idempotency_key", "countdown", "eta", "queue", "priority", "session"})

Args = tuple[Any, ...] | list[Any]

#: Keys of an ``enqueue_many`` item given as a dict.
ITEM_KEYS = frozenset({"args", "kwargs", "idempotency_key", "correlation_id"})
#: Messages per broker round trip in ``enqueue_many`` (default, and the most accepted).
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000


class JobHandle:
    """A handle on one enqueued job: its ``id``, ``status()`` and ``wait()``."""

    def __init__(self, jobs: JobService, job_id: str, name: str, *, duplicate: bool = False,
                 correlation_id: str | None = None) -> None:
        self._jobs = jobs
        self.id = job_id
        self.name = name
        #: True when ``unique_for`` dropped this enqueue and returned the first job's handle.
        self.duplicate = duplicate
        self.correlation_id = correlation_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.name}[{self.id}]>"

    def status(self) -> JobStatus:
        """``pending``, ``running``, ``retrying``, ``succeeded``, ``failed`` or ``revoked``."""
        return self._jobs.status(self.id)

    def wait(self, timeout: float | None = 30.0) -> Any:
        """Block until the job finished and return its result.

        Raises:
            Timeout: the job did not finish within ``timeout`` seconds.
            JobFailed: the job failed (``remote_type``/``remote_message`` say why).
        """
        return self._jobs.wait(self.id, timeout=timeout)


class Job(Generic[P, R]):
    """A declared job. Call it to run the handler in-process; ``enqueue`` to run it on a worker."""

    def __init__(self, jobs: JobService, fn: Callable[P, R], options: JobOptions, task: EsfTask) -> None:
        self._jobs = jobs
        self.fn = fn
        self.options = options
        self.task = task
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.options.name

    def __repr__(self) -> str:
        return f"<Job {self.name} queue={self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Send the job to its queue. Returns a :class:`JobHandle`.

        Options (not passed to the handler): ``correlation_id``, ``idempotency_key``,
        ``countdown`` (seconds) or ``eta`` (datetime), ``queue``, ``priority``, and
        ``session``: a SQLAlchemy session whose transaction the job joins (it is sent
        only after that transaction commits, and never if it rolls back).

        Raises:
            SerializationError: an argument is not JSON (nothing is sent).
            PayloadTooLarge: the encoded arguments exceed ``jobs.max_payload_bytes``.
            UnknownQueue: ``queue`` is not configured.
            ServiceUnavailable: the broker cannot be reached.
        """
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in ENQUEUE_OPTIONS}
        return self.enqueue_with(args, kwargs, **options)

    def enqueue_with(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        session: Session | None = None,
    ) -> JobHandle:
        """Like :meth:`enqueue`, with the handler's arguments given explicitly."""
        kwargs = dict(kwargs or {})
        prepared = self.prepare(args, kwargs, correlation_id=correlation_id, idempotency_key=idempotency_key,
                                countdown=countdown, eta=eta, queue=queue)
        return self._jobs.send(self, prepared, countdown=countdown, eta=eta, priority=priority,
                               session=session)

    def enqueue_many(
        self,
        items: Iterable[Sequence[Any] | Mapping[str, Any]],
        *,
        correlation_id: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        session: Session | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[JobHandle]:
        """Send one job per item, ``batch_size`` messages per broker round trip. Returns the handles, in order.

        An item is the list (or tuple) of the handler's positional arguments, or a dict with
        any of ``args``, ``kwargs``, ``idempotency_key`` and ``correlation_id``. The other
        options apply to every job. Every item is validated before anything is sent;
        ``unique_for`` drops duplicates (also within ``items``) as ``enqueue`` does.

        A batch costs one wait for the broker instead of one per job: one Redis pipeline,
        or on RabbitMQ one stream of publisher confirms. ``enqueue_many`` returns once the
        broker has confirmed every job.

        Raises:
            ValidationError: an item or an option is invalid (``details["item"]`` is its
                index; nothing is sent).
            BatchNotSent: the broker did not confirm a batch; ``details`` has the ids that
                were ``sent``, ``uncertain``, ``refused`` and ``not_sent``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValidationError(f"batch_size: must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}",
                                  errors={"batch_size": "invalid"})
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
            raise ValidationError(f"{self.name}: items must be an iterable of argument lists or dicts, "
                                  f"got {type(items).__name__}", errors={"items": "invalid"})
        prepared = []
        for index, item in enumerate(items):
            args, kwargs, key, cid = self._item(index, item)
            try:
                prepared.append(self.prepare(args, kwargs, correlation_id=cid or correlation_id,
                                             idempotency_key=key, countdown=countdown, eta=eta, queue=queue))
            except ValidationError as exc:
                exc.details["item"] = index
                exc.message = f"item {index}: {exc.message or exc}"
                exc.args = (exc.message, *exc.args[1:])
                raise
        return self._jobs.send_many(self, prepared, countdown=countdown, eta=eta, priority=priority,
                                    session=session, batch_size=batch_size)

    def _item(self, index: int, item: Any) -> tuple[Args, dict[str, Any], str | None, str | None]:
        """``(args, kwargs, idempotency_key, correlation_id)`` of one ``enqueue_many`` item."""
        if isinstance(item, list | tuple):
            return item, {}, None, None
        if isinstance(item, Mapping):
            unknown = sorted(str(k) for k in item if k not in ITEM_KEYS)
            if unknown:
                raise ValidationError(f"item {index}: unknown key(s) {', '.join(map(repr, unknown))}; an item "
                                      f"takes {', '.join(sorted(ITEM_KEYS))}", errors={f"items[{index}]": "invalid"},
                                      item=index)
            args = item.get("args", ())
            kwargs = item.get("kwargs") or {}
            if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
                raise ValidationError(f"item {index}: args must be a list and kwargs a dict",
                                      errors={f"items[{index}]": "invalid"}, item=index)
            return args, dict(kwargs), item.get("idempotency_key"), item.get("correlation_id")
        raise ValidationError(f"item {index}: must be a list of arguments or a dict, got {type(item).__name__}",
                              errors={f"items[{index}]": "invalid"}, item=index)

    def prepare(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *,
                correlation_id: str | None, idempotency_key: str | None, countdown: float | None,
                eta: datetime | None, queue: str | None) -> PreparedJob:
        """Validate arguments and options; build the message metadata. Sends nothing."""
        if not isinstance(args, tuple | list):
            raise ValidationError(f"{self.name}: args must be a list or tuple, got {type(args).__name__}")
        check_json(list(args), f"{self.name} args")
        check_json(kwargs, f"{self.name} kwargs")
        check_size(dumps([list(args), kwargs]), self._jobs.settings.jobs.max_payload_bytes, f"{self.name} arguments")
        for label, value in (("correlation_id", correlation_id), ("idempotency_key", idempotency_key)):
            if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
                raise ValidationError(f"{label}: must be a non-empty string of at most 200 characters",
                                      errors={label: "invalid"})
        if countdown is not None and eta is not None:
            raise ValidationError("give countdown or eta, not both")
        if countdown is not None and (not isinstance(countdown, int | float) or countdown < 0):
            raise ValidationError(f"countdown: must be seconds >= 0, got {countdown!r}")
        if eta is not None and (not isinstance(eta, datetime) or eta.tzinfo is None):
            raise ValidationError("eta: must be a timezone-aware datetime")
        target = queue or self.options.queue
        if target not in self._jobs.settings.jobs.all_queues:
            raise UnknownQueue(f"unknown queue {target!r}; configured queues: "
                               f"{', '.join(self._jobs.settings.jobs.all_queues)}")
        parent = current_job.get()
        if correlation_id is None and parent and parent.correlation_id:
            correlation_id = parent.correlation_id
        if correlation_id is None:
            job_id, correlation_id = new_ids(2)
        else:
            job_id = new_id()
        meta = JobMeta(
            queue=target,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            enqueued_at=time.time(),
            parent_id=parent.job_id if parent else None,
            flags=_carried_flags(),
        )
        return PreparedJob(job_id=job_id, args=tuple(args), kwargs=kwargs, meta=meta)

    def unique_key(self, prepared: PreparedJob) -> str:
        """The key ``unique_for`` deduplicates on: the idempotency key, or the job and its arguments."""
        if prepared.meta.idempotency_key:
            return f"{self.name}:key:{prepared.meta.idempotency_key}"
        digest = hashlib.sha256(dumps([list(prepared.args), prepared.kwargs]).encode()).hexdigest()
        return f"{self.name}:args:{digest}"

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A Celery signature of this job, for chains, groups and chords (see ``Foundation.chain``)."""
        check_json(list(args), f"{self.name} args")
        check_json(kwargs, f"{self.name} kwargs")
        return self.task.s(*args, **kwargs).set(queue=self.options.queue)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: the previous step's result is not passed in."""
        check_json(list(args), f"{self.name} args")
        check_json(kwargs, f"{self.name} kwargs")
        return self.task.si(*args, **kwargs).set(queue=self.options.queue)

    def context(self, prepared: PreparedJob) -> JobContext:
        return JobContext(job_id=prepared.job_id, job_name=self.name, queue=prepared.meta.queue,
                          args=prepared.args, kwargs=prepared.kwargs,
                          correlation_id=prepared.meta.correlation_id,
                          idempotency_key=prepared.meta.idempotency_key, enqueued_at=prepared.meta.enqueued_at,
                          parent_id=prepared.meta.parent_id)


def _carried_flags() -> dict[str, Any] | None:
    """The flag context and answers of the current request or job, for the new job's headers."""
    carry = current_flags.get()
    return carry.to_wire() if carry is not None else None


class PreparedJob:
    """A validated job message, not yet sent."""

    __slots__ = ("args", "job_id", "kwargs", "meta")

    def __init__(self, job_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: JobMeta) -> None:
        self.job_id = job_id
        self.args = args
        self.kwargs = kwargs
        self.meta = meta


def failure_from_result(job_id: str, result: Any, state: str) -> JobFailed:
    rtype = type(result).__name__ if isinstance(result, BaseException) else state
    return JobFailed(f"job {job_id} failed: {rtype}: {result}", job_id=job_id, remote_type=rtype,
                     remote_message=str(result))


def raise_timeout(job_id: str, timeout: float | None) -> Timeout:
    return Timeout(f"job {job_id} did not finish within {timeout} s; it may still be queued or running",
                   job_id=job_id)
