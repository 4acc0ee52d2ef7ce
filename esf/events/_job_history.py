"""Job history as events: every lifecycle step of every job, without slowing the job path.

:class:`JobHistoryHooks` turns job hooks into events (types in
:data:`JOB_EVENT_TYPES`), in the stream ``job-<job_id>``, with the job's
correlation id. The hook only builds the event and puts it in a bounded
in-process buffer; a background thread appends the buffer in batches (one
transaction per batch). When the database is unreachable the store spools
the batch locally (see :class:`~esf.events.AppendResult`), so nothing is
lost. When the buffer is full (``max_buffer`` events waiting), the hook
blocks until there is room: memory stays bounded and nothing is dropped.

Event data (all JSON): ``job`` (name), ``queue``, ``attempt``, ``at`` (Unix
time of the step, seconds), and per type: ``runtime_s``; ``error_type``,
``error_message``, ``error_code``; ``delay_s``, ``next_attempt``;
``reason``, ``attempts``; ``new_job_id``. Job arguments are never recorded
(they may hold personal data or secrets).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._sqlite import fork_guard
from ..errors import EsfError, Retry, SkipJob, ValidationError
from ..hooks import JobContext, JobHooks
from ..lifecycle import track_fork
from ._async import APPEND_JOB
from ._model import Event
from ._validation import MAX_STREAM_ID_CHARS, STREAM_ID_RE

if TYPE_CHECKING:
    from ._contract import EventStore

__all__ = ["JOB_EVENT_TYPES", "JobHistoryHooks", "job_stream_id"]

log = logging.getLogger("esf.events.jobs")

#: Event types written by :class:`JobHistoryHooks`.
JOB_EVENT_TYPES: tuple[str, ...] = (
    "job.enqueued",
    "job.started",
    "job.retried",
    "job.succeeded",
    "job.failed",
    "job.dead_lettered",
    "job.replayed",
)
#: ESF's own jobs that leave no history: an event append would only record itself. Every other
#: service task (``esf.events.prune`` …) is an ordinary job with its lifecycle in the history.
UNRECORDED_JOBS = frozenset({APPEND_JOB})
#: Longest error message kept in an event, in characters.
MAX_ERROR_MESSAGE_CHARS = 2000
_STREAM_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@/+=$\-]")
#: A job id that is its own stream suffix (``job-`` + it matches the stream id pattern as it is).
_SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_.:@/+=$\-]{1,196}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Metadata of every job event.
_METADATA: dict[str, Any] = {"source": "esf.jobs"}
_new_object = object.__new__
_set_attribute = object.__setattr__


def job_stream_id(job_id: str) -> str:
    """The stream of a job's history: ``job-<job_id>`` (unsafe characters replaced by ``_``)."""
    if type(job_id) is str and _SAFE_JOB_ID.fullmatch(job_id):
        return "job-" + job_id  # the common case: an ESF job id (a UUID)
    stream = "job-" + _STREAM_UNSAFE.sub("_", str(job_id))
    stream = stream[:MAX_STREAM_ID_CHARS]
    return stream if STREAM_ID_RE.match(stream) else "job-invalid"


def _clean(text: object, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    if type(text) is str and len(text) <= limit and "\x00" not in text:
        return text
    value = str(text).replace("\x00", "")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _ref(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) <= 200 and value.isprintable():
        return value  # no control characters (isprintable is False for them), short enough
    value = _CONTROL.sub("", value)[:200]
    return value or None


def _error(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {}
    info: dict[str, Any] = {"error_type": type(exc).__name__, "error_message": _clean(exc)}
    if isinstance(exc, EsfError):
        info["error_code"] = exc.code
    return info


class JobHistoryHooks(JobHooks):
    """Job hooks that record each job's lifecycle as events (see the module docstring).

    Parameters:
        store: the event store to append to.
        max_buffer: events waiting at most before a hook blocks.
        batch_size: events appended per transaction at most.
        flush_interval_s: longest time an event waits in the buffer, in seconds.
        max_backoff_s: longest pause between two attempts when an append fails.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.store = store
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        #: This process's writer thread; None until the first event (and in a forked child).
        self._thread: threading.Thread | None = None
        #: Serialises starts of the writer thread (rare: once per process, and after a close).
        self._start_lock = threading.Lock()
        self._reset_buffer()
        track_fork(self)

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): the parent's writer thread and buffered events stay
        the parent's; the child buffers anew and starts its own writer with its first event."""
        self._reset_buffer()
        self._thread = None
        self._start_lock = threading.Lock()

    def _reset_buffer(self) -> None:
        # The hot path is one append under a plain lock: no condition variable, no wake-up per
        # event (the writer wakes every flush_interval_s, or when a batch is full).
        self._lock = threading.Lock()
        self._buffer: deque[Event] = deque()
        self._added = 0  # events buffered so far, under _lock
        self._done = 0  # events handed to the store so far, under _lock
        self._drained = threading.Condition(self._lock)
        self._wake = threading.Event()
        # Set by flush/close: the writer writes what it holds without lingering for more.
        self._urgent = threading.Event()
        self._stop = threading.Event()

    # -- hooks ------------------------------------------------------------

    def after_enqueue(self, ctx: JobContext) -> None:
        """Records ``job.enqueued``."""
        self._job_event("job.enqueued", ctx, {"enqueued_at": ctx.enqueued_at})

    def before_process(self, ctx: JobContext) -> None:
        """Records ``job.started``."""
        extra: dict[str, Any] = {"started_at": ctx.started_at}
        if ctx.started_at is not None and ctx.enqueued_at is not None:
            extra["wait_s"] = round(max(0.0, ctx.started_at - ctx.enqueued_at), 6)
        self._job_event("job.started", ctx, extra)

    def after_process(
        self, ctx: JobContext, *, result: Any = None, exc: BaseException | None = None, runtime_s: float = 0.0
    ) -> None:
        """Records ``job.succeeded`` (also for ``SkipJob``) or ``job.failed``; a ``Retry`` request records nothing."""
        runtime = {"runtime_s": round(float(runtime_s), 6)}
        if exc is None:
            self._job_event("job.succeeded", ctx, runtime)
        elif isinstance(exc, SkipJob):
            self._job_event("job.succeeded", ctx, {**runtime, "skipped": True, "reason": _clean(exc)})
        elif isinstance(exc, Retry):
            return  # not a failure: after_retry records the retry
        else:
            self._job_event("job.failed", ctx, {**runtime, **_error(exc)})

    def after_retry(self, ctx: JobContext, *, exc: BaseException, delay_s: float) -> None:
        """Records ``job.retried`` with the error and the delay."""
        self._job_event(
            "job.retried",
            ctx,
            {"delay_s": round(float(delay_s), 6), "next_attempt": ctx.attempt + 1, **_error(exc)},
        )

    def after_dead_letter(self, entry: Any) -> None:
        """Records ``job.dead_lettered`` (``entry``'s attributes are read defensively)."""
        job_id = str(getattr(entry, "job_id", "") or "unknown")
        attempts = getattr(entry, "attempts", None)
        data: dict[str, Any] = {
            "job": _opt_str(getattr(entry, "job", None) or getattr(entry, "job_name", None)),
            "queue": _opt_str(getattr(entry, "queue", None)),
            "reason": _opt_str(getattr(entry, "reason", None)),
            "error_type": _opt_str(getattr(entry, "exception_type", None)),
            "error_message": _opt_str(getattr(entry, "exception_message", None)),
            "attempts": attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else None,
        }
        self._emit("job.dead_lettered", job_id, _ref(getattr(entry, "correlation_id", None)), None, data)

    def after_replay(self, entry: Any, *, job_id: str) -> None:
        """Records ``job.replayed`` in the dead-lettered job's stream, naming the new job id."""
        old_id = str(getattr(entry, "job_id", "") or "unknown")
        data = {
            "job": _opt_str(getattr(entry, "job", None) or getattr(entry, "job_name", None)),
            "queue": _opt_str(getattr(entry, "queue", None)),
            "new_job_id": _clean(job_id, 200),
        }
        self._emit("job.replayed", old_id, _ref(getattr(entry, "correlation_id", None)), None, data)

    # -- buffering ----------------------------------------------------------

    def _job_event(self, event_type: str, ctx: JobContext, extra: Mapping[str, Any]) -> None:
        if ctx.job_name in UNRECORDED_JOBS:
            return
        data = {"job": _clean(ctx.job_name, 200), "queue": _clean(ctx.queue, 200), "attempt": ctx.attempt}
        data.update(extra)
        self._emit(event_type, ctx.job_id, _ref(ctx.correlation_id), _ref(ctx.parent_id), data)

    def _emit(
        self, event_type: str, job_id: str, correlation_id: str | None, parent_id: str | None, data: dict[str, Any]
    ) -> None:
        data["job_id"] = _clean(job_id, 200)
        data["at"] = time.time()
        # Event(...) without the frozen dataclass's per-field __setattr__ (same fields, same value).
        event: Event = _new_object(Event)
        _set_attribute(event, "__dict__", {
            "type": event_type, "data": data, "correlation_id": correlation_id, "parent_id": parent_id,
            "stream_id": job_stream_id(job_id), "event_id": None, "metadata": _METADATA,
        })
        self._put(event)

    def _put(self, event: Event) -> None:
        if self._thread is None or self._stop.is_set():
            self._start()
        with self._lock:
            self._buffer.append(event)
            self._added += 1
            waiting = len(self._buffer)
        if waiting >= self.batch_size or waiting >= self.max_buffer:
            self._wake.set()
        if waiting >= self.max_buffer:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Block while max_buffer events wait: memory stays bounded, nothing is dropped."""
        with self._drained:
            while len(self._buffer) >= self.max_buffer:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = None
                    break
                self._drained.wait(self.flush_interval_s)
        if self._thread is None:
            self._start(force=True)

    def _start(self, *, force: bool = False) -> None:
        """Start this process's writer thread (a forked child inherits none: it starts afresh)."""
        with self._start_lock:
            if self._stop.is_set():  # closed, then used again: a new writer for what comes next
                if self._thread is not None and self._thread is not threading.current_thread():
                    self._thread.join(self.max_backoff_s)
                self._stop = threading.Event()
                self._wake = threading.Event()
                force = True
            if force or self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="esf-job-history", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        buffer, stop, wake = self._buffer, self._stop, self._wake
        while True:
            if not buffer:
                if stop.is_set():
                    return
                wake.wait(self.flush_interval_s)
                wake.clear()
                continue
            # Linger up to flush_interval_s for more events: one transaction per batch, not per
            # event, keeps the writer from competing with the job path for the interpreter.
            # A flush that woke the writer while it waited on an empty buffer skips the linger: the
            # flush waits for these events, not for a full interval more.
            if len(buffer) < self.batch_size and not stop.is_set() and not self._urgent.is_set():
                wake.wait(self.flush_interval_s)
                wake.clear()
            with self._lock:
                batch = [buffer.popleft() for _ in range(min(len(buffer), self.batch_size))]
                if not buffer:
                    self._urgent.clear()
            try:
                self._write(batch, stop)
            finally:
                with self._drained:
                    self._done += len(batch)
                    self._drained.notify_all()

    def _write(self, batch: list[Event], stop: threading.Event) -> None:
        backoff = 0.05
        while True:
            try:
                with fork_guard:  # no fork in the middle of the transaction (see esf._sqlite)
                    self.store.append(batch)  # spooled (pending) when the database is unreachable
                return
            except ValidationError:
                self._write_one_by_one(batch)
                return
            except Exception as exc:
                if stop.is_set():
                    log.error(
                        "job history: %d event(s) could not be written before shutdown (%s: %s)",
                        len(batch),
                        type(exc).__name__,
                        exc,
                    )
                    return
                log.warning("job history: append failed (%s); retrying in %.2f s", type(exc).__name__, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _write_one_by_one(self, batch: list[Event]) -> None:
        for event in batch:
            try:
                self.store.append(event)
            except ValidationError as exc:
                log.error("job history: event %s refused by the store: %s", event.type, exc)
            except Exception:
                log.exception("job history: event %s could not be written", event.type)

    def append_later(self, event: Event) -> None:
        """Queue any event for the background writer (same batching, retries and spooling)."""
        self._put(event)

    # -- control ------------------------------------------------------------

    def pending(self) -> int:
        """Events buffered and not yet handed to the store."""
        with self._lock:
            return self._added - self._done

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until every buffered event was handed to the store (True) or ``timeout`` passed (False)."""
        if self._thread is None:
            return True  # nothing buffered yet in this process (a forked child inherits no events to write)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._drained:
            target = self._added
            if self._done >= target:
                return True
        self._urgent.set()
        self._wake.set()
        with self._drained:
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    return False  # no writer in this process (forked after the events were buffered)
                self._drained.wait(remaining if remaining is None else min(remaining, self.flush_interval_s))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered (up to ``timeout`` seconds), then stop the thread."""
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _opt_str(value: object) -> str | None:
    return None if value is None else _clean(value, 2000)
