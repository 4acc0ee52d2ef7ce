"""Jobs enqueued inside the caller's database transaction (the transactional outbox).

``job.enqueue(..., session=s)`` writes the job message into ``esf_outbox``
within ``s``'s transaction and sends nothing. When ``s`` commits, a relay
thread of this process is woken to dispatch the rows in insertion order and
delete them; rows left by a process that died are dispatched by the next
relay that runs (every worker runs one). The relay takes only rows of kind
:data:`JOB_KIND`: rows other code writes with ``outbox_put(kind=...)`` are
left for that kind's own relay. A rolled-back transaction leaves no
row, so no job is ever sent for it. Delivery is at least once: the job id is
fixed when the row is written, so a repeated dispatch is the same job.

A worker's relay runs in its main process, which forks pool processes at any
moment. There (:attr:`JobOutbox.forking`) each batch is drained under the fork
guard and, on SQLite, the connections are closed before the guard is released,
so a pool process forked later inherits none of this process's SQLite state
(see :mod:`esf._sqlite`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._sqlite import fork_guard
from ..errors import ValidationError
from ._meta import JobMeta

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ._job import Job, PreparedJob
    from ._service import JobService

log = logging.getLogger("esf.jobs.outbox")

#: Seconds between two looks at the outbox when nothing woke the relay.
RELAY_INTERVAL_S = 1.0
#: Rows dispatched per transaction.
RELAY_BATCH = 200
#: The outbox kind of job messages; this relay reads, sends and deletes only rows of this kind.
JOB_KIND = "job"


class JobOutbox:
    """Writes jobs into the caller's transaction and relays them after commit."""

    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs
        #: True in a process that forks children (a worker's main process): see the module docstring.
        self.forking = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._hooked: weakref.WeakSet[Session] = weakref.WeakSet()

    def put(self, session: Session, job: Job[Any, Any], prepared: PreparedJob, *, countdown: float | None,
            eta: datetime | None, priority: int | None) -> None:
        """Add the job message to ``session``'s transaction.

        Raises:
            UnsupportedCapability: the event store backend has no outbox (not a transactional store).
        """
        from esf.plugins.sqlalchemy_events import outbox_put

        from ..events import TransactionalEventStore, require_capability

        require_capability(self._jobs.context.events(), TransactionalEventStore, needed_for="enqueue(..., session=)")
        self._jobs.context.events().head()  # the tables exist before the caller's transaction touches them
        payload = {
            "job": job.name,
            "job_id": prepared.job_id,
            "args": list(prepared.args),
            "kwargs": prepared.kwargs,
            "headers": prepared.meta.headers(),
            "countdown": countdown,
            "eta": eta.isoformat() if eta is not None else None,
            "priority": priority,
        }
        outbox_put(session, JOB_KIND, payload)
        self._watch(session)
        self.start()

    def _watch(self, session: Session) -> None:
        if session in self._hooked:
            return
        from sqlalchemy import event

        event.listen(session, "after_commit", lambda _s: self._wake.set())
        self._hooked.add(session)

    def dispatch(self, kind: str, payload: dict[str, Any]) -> None:
        """Send one job message of the outbox (called by the relay of :data:`JOB_KIND`, oldest first).

        Raises:
            ValidationError: ``kind`` is not :data:`JOB_KIND` (the row is kept: a relay never drops it).
        """
        if kind != JOB_KIND:
            raise ValidationError(f"outbox kind {kind!r}: the jobs relay sends only {JOB_KIND!r} rows")
        jobs = self._jobs
        meta = JobMeta.from_headers(payload.get("headers"), self._jobs.settings.jobs.default_queue)
        eta = datetime.fromisoformat(payload["eta"]) if payload.get("eta") else None
        name = str(payload["job"])
        try:
            task = jobs.get(name).task
        except Exception:
            task = None
        if task is not None:
            jobs._publish(task, str(payload["job_id"]), list(payload["args"]), dict(payload["kwargs"]), meta,
                          countdown=payload.get("countdown"), eta=eta, priority=payload.get("priority"))
        else:
            app = self._jobs.context.celery()
            app.send_task(name, payload["args"], payload["kwargs"], task_id=payload["job_id"], queue=meta.queue,
                          headers=meta.headers(), countdown=payload.get("countdown"), eta=eta)

    def drain(self, *, older_than_s: float | None = None) -> int:
        """Dispatch everything waiting now (with ``older_than_s``: only rows written at least that many seconds
        ago); returns how many messages were sent.

        Raises:
            ValidationError: ``older_than_s`` is not a number >= 0.
        """
        total = 0
        while True:
            n = self._drain_batch(older_than_s)
            total += n
            if n < RELAY_BATCH:
                return total

    def _drain_batch(self, older_than_s: float | None) -> int:
        from ..events import TransactionalEventStore
        from ..events._contract import unwrap

        if not isinstance(unwrap(self._jobs.context.events()), TransactionalEventStore):
            return 0  # a store without an outbox holds no row (put refuses): nothing to relay
        if not self.forking:
            relay = self._jobs.context.events().outbox_relay(self.dispatch, kind=JOB_KIND)
            return relay.drain(RELAY_BATCH, older_than_s=older_than_s)
        # SQLite keeps its lock records per process, and a child inherits them: forked while the
        # drain holds the write lock, it would fail every write with "database is locked" for as
        # long as it lives; forked while a connection is merely open, it would believe it holds
        # file locks that it does not.
        with fork_guard:
            relay = self._jobs.context.events().outbox_relay(self.dispatch, kind=JOB_KIND)
            try:
                return relay.drain(RELAY_BATCH, older_than_s=older_than_s)
            finally:
                if relay.engine.dialect.name == "sqlite":
                    relay.engine.dispose()

    def send(self, ids: Sequence[int]) -> int:
        """Dispatch the outbox rows ``ids`` that the caller just committed, now; returns how many were sent.

        Rows a drain holds or sent already are skipped; on a failure they stay for the relay.
        """
        if not self.forking:
            return self._jobs.context.events().outbox_relay(self.dispatch, kind=JOB_KIND).send(ids)
        with fork_guard:
            relay = self._jobs.context.events().outbox_relay(self.dispatch, kind=JOB_KIND)
            try:
                return relay.send(ids)
            finally:
                if relay.engine.dialect.name == "sqlite":
                    relay.engine.dispose()

    def wake(self) -> None:
        """Make this process's relay thread drain again as soon as it can (rows committed by other means)."""
        self._wake.set()

    def start(self) -> None:
        """Start this process's relay thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="esf-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RELAY_INTERVAL_S)
            self._wake.clear()
            try:
                self.drain()
            except Exception as exc:
                log.warning("outbox relay: %s: %s; retrying", type(exc).__name__, exc)
                self._stop.wait(RELAY_INTERVAL_S)
