"""The scheduler: one leader among any number of ``esf beat`` processes fires the due schedules.

Each tick a beat takes or renews the leadership lease ``beat:leader`` through the
Foundation's coordinator (Redis, or SQLite when embedded). The leader reads every
schedule from the store (so run-time changes apply from the next tick), and for
each due occurrence claims ``beat:fire:<name>:<due ms>`` before enqueueing it: two
beats that both believe they lead still fire an occurrence once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from esf.errors import EsfError, ServiceUnavailable, UnknownJob, ValidationError
from esf.jobs._schedules import Schedule, ScheduleService, schedule_service, utcnow

if TYPE_CHECKING:
    import threading

    from esf.foundation import Foundation

log = logging.getLogger("esf.beat")

#: Coordinator key of the leadership lease.
LEADER_KEY = "beat:leader"
#: Seconds a leader's lease lasts without renewal: a dead leader is replaced within this (plus one tick).
DEFAULT_LEASE_TTL_S = 10.0
#: Seconds between two ticks (the most a run-time change waits before beat sees it).
DEFAULT_TICK_S = 1.0
#: Bounds of how long a fire claim is kept (10 periods of the schedule, within these bounds).
MIN_FIRE_CLAIM_TTL_S = 600.0
MAX_FIRE_CLAIM_TTL_S = 7 * 86400.0
#: Seconds between two warnings while the store or the coordinator stays unreachable.
OUTAGE_LOG_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Fire:
    """One occurrence fired by this beat."""

    schedule: str
    due: datetime
    job_id: str
    occurrence: str


def occurrence_id(name: str, due: datetime) -> str:
    """The id of one occurrence (at most 200 characters): also the correlation id and idempotency key of
    the job it sends, so a handler can tell a repeated delivery of one occurrence from the next one."""
    if len(name) > 160:  # keep it within the 200 characters a correlation id may have
        name = f"{name[:120]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return f"schedule:{name}:{round(due.timestamp() * 1000)}"


class Beat:
    """The scheduler of one process.

    Parameters:
        foundation: the Foundation (its jobs, coordinator and schedule store).
        tick_s: seconds between ticks (> 0).
        lease_ttl_s: seconds the leadership lease lasts; must exceed twice ``tick_s``.
        service: the schedule service (default: the Foundation's).

    Raises:
        ValidationError: ``tick_s`` or ``lease_ttl_s`` is out of range.
    """

    def __init__(self, foundation: Foundation, *, tick_s: float = DEFAULT_TICK_S,
                 lease_ttl_s: float = DEFAULT_LEASE_TTL_S, service: ScheduleService | None = None) -> None:
        if not tick_s > 0:
            raise ValidationError(f"tick: must be seconds > 0, got {tick_s!r}", errors={"tick": "must be > 0"})
        if not lease_ttl_s > 2 * tick_s:
            raise ValidationError(f"lease_ttl: must exceed twice the tick ({2 * tick_s} s), got {lease_ttl_s!r}",
                                  errors={"lease_ttl": "too short"})
        self._fnd = foundation
        self.tick_s = tick_s
        self.lease_ttl_s = lease_ttl_s
        self.service = service or schedule_service(foundation)
        #: ``node:pid:random``: who holds the lease.
        self.owner = f"{foundation.settings.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False
        self._synced = False
        self._next_due: datetime | None = None

    # -- one tick -------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[Fire]:
        """Renew (or take) the lease and, as leader, fire what is due. Returns the fires of this tick.

        Raises:
            ServiceUnavailable: the coordinator or the schedule store cannot be reached.
        """
        if not self._synced:
            written = self.service.sync_declared()
            self._synced = True
            if written:
                log.info("beat: wrote code-declared schedules %s", ", ".join(written))
        leader = self._fnd.jobs.coordinator.acquire_lease(LEADER_KEY, self.owner, self.lease_ttl_s)
        if leader != self.leader:
            log.info("beat %s: %s", self.owner, "now leading" if leader else "lost the leadership")
            self.leader = leader
        if not leader:
            return []
        now = now or utcnow()
        fires: list[Fire] = []
        upcoming: list[datetime] = []
        for schedule in self.service.readable():
            if not schedule.enabled:
                continue
            if schedule.next_run_at is None:
                first = schedule.first_run_after(now)
                self.service.record_run(schedule, schedule.last_run_at, first)
                upcoming.append(first)
            elif schedule.next_run_at <= now:
                fire = self._fire(schedule, schedule.next_run_at, now)
                if fire is not None:
                    fires.append(fire)
                upcoming.append(schedule.following(schedule.next_run_at, now))
            else:
                upcoming.append(schedule.next_run_at)
        self._next_due = min(upcoming, default=None)
        return fires

    def _fire(self, schedule: Schedule, due: datetime, now: datetime) -> Fire | None:
        following = schedule.following(due, now)
        occurrence = occurrence_id(schedule.name, due)
        claim_key = f"beat:fire:{occurrence[len('schedule:'):]}"
        coord = self._fnd.jobs.coordinator
        if coord.claim(claim_key, self.owner, self._claim_ttl(schedule, due, following)) is not None:
            # Another beat fired it; make sure the state moves on even if that beat died before recording it.
            self.service.record_run(schedule, schedule.last_run_at, following)
            return None
        try:
            job_id = self.send(schedule, occurrence)
        except ServiceUnavailable as exc:
            coord.delete(claim_key)  # not sent: let the next tick try this occurrence again
            log.warning("beat: cannot fire %s now (%s); retrying on the next tick", schedule.name, exc)
            return None
        except Exception as exc:  # a bad schedule must not stop the others
            log.error("beat: schedule %s cannot fire (%s: %s); skipping occurrence %s", schedule.name,
                      type(exc).__name__, exc, occurrence)
            self.service.record_run(schedule, schedule.last_run_at, following)
            return None
        if not self.service.record_run(schedule, now, following):
            log.info("beat: schedule %s changed while firing; its new definition applies", schedule.name)
        log.info("beat: fired %s -> job %s[%s] (due %s)", schedule.name, schedule.job, job_id, due.isoformat())
        return Fire(schedule.name, due, job_id, occurrence)

    @staticmethod
    def _claim_ttl(schedule: Schedule, due: datetime, following: datetime) -> float:
        period = schedule.every if schedule.every is not None else (following - due).total_seconds()
        return min(MAX_FIRE_CLAIM_TTL_S, max(MIN_FIRE_CLAIM_TTL_S, 10 * period))

    def send(self, schedule: Schedule, occurrence: str) -> str:
        """Enqueue the schedule's job; returns the job id. A job not declared in this process is sent by name.

        Raises:
            ServiceUnavailable: the broker cannot be reached.
            ValidationError: the arguments or the queue are refused.
        """
        try:
            job = self._fnd.jobs.get(schedule.job)
        except UnknownJob:
            return self._send_by_name(schedule, occurrence)
        handle = job.enqueue_with(schedule.args, dict(schedule.kwargs), queue=schedule.queue,
                                  correlation_id=occurrence, idempotency_key=occurrence)
        return handle.id

    def _send_by_name(self, schedule: Schedule, occurrence: str) -> str:
        from esf.jobs._meta import JobMeta

        queue = schedule.queue or self._fnd.settings.jobs.default_queue
        self.service.check(schedule, require_job=False)
        job_id = str(uuid.uuid4())
        meta = JobMeta(queue=queue, correlation_id=occurrence, idempotency_key=occurrence, enqueued_at=time.time())
        try:
            self._fnd.celery.send_task(schedule.job, list(schedule.args), dict(schedule.kwargs), task_id=job_id,
                                       queue=queue, headers=meta.headers())
        except Exception as exc:
            from kombu.exceptions import OperationalError

            if isinstance(exc, OperationalError | ConnectionError | OSError):
                raise ServiceUnavailable(f"cannot send job {schedule.job}: broker unreachable ({exc})") from exc
            raise
        return job_id

    # -- the loop ----------------------------------------------------------------

    def sleep_s(self, now: datetime | None = None) -> float:
        """Seconds until the next tick: ``tick_s``, or less when the leader has an earlier due time."""
        if not self.leader or self._next_due is None:
            return self.tick_s
        now = now or utcnow()
        return max(0.01, min(self.tick_s, (self._next_due - now) / timedelta(seconds=1)))

    def _warm_up(self) -> None:
        """Load the result backend and the producer pool now, not at the first fire (~1 s of imports)."""
        try:
            _ = self._fnd.celery.backend
            with self._fnd.celery.producer_or_acquire():
                pass
        except Exception as exc:
            log.warning("beat: could not prepare the broker connection yet (%s)", exc)

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; then give up the lease so another beat takes over at once."""
        self._warm_up()
        log.info("beat %s: started (tick %.2f s, lease %.1f s)", self.owner, self.tick_s, self.lease_ttl_s)
        outage_logged: float | None = None
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except ServiceUnavailable as exc:
                    self.leader = False
                    now = time.monotonic()
                    if outage_logged is None or now - outage_logged >= OUTAGE_LOG_INTERVAL_S:
                        log.warning("beat: store or coordinator unavailable (%s); retrying every %.2f s",
                                    exc, self.tick_s)
                        outage_logged = now
                    stop.wait(self.tick_s)
                    continue
                except Exception:  # beat must outlive one bad tick; the lease lapses if this repeats
                    log.exception("beat: tick failed; retrying")
                    stop.wait(self.tick_s)
                    continue
                if outage_logged is not None:
                    log.warning("beat: store and coordinator reachable again")
                    outage_logged = None
                stop.wait(self.sleep_s())
        finally:
            try:
                self._fnd.jobs.coordinator.release_lease(LEADER_KEY, self.owner)
            except EsfError as exc:
                log.warning("beat: could not release the lease (%s); it expires in %.1f s", exc, self.lease_ttl_s)
            log.info("beat %s: stopped", self.owner)
