"""Worker entry points: run a Celery worker for a Foundation with a profile."""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING

from .profiles import PROFILES, WorkerProfile, get_profile

if TYPE_CHECKING:
    from esf.foundation import Foundation

log = logging.getLogger("esf.workers")

__all__ = ["PROFILES", "WorkerProfile", "get_profile", "run_worker", "worker_argv"]


def worker_argv(foundation: Foundation, profile: WorkerProfile, *, loglevel: str = "INFO",
                hostname: str | None = None) -> list[str]:
    """The ``celery worker`` arguments for ``profile``."""
    queues = profile.resolve_queues(foundation.settings.jobs)
    unknown = [q for q in queues if q not in foundation.settings.jobs.all_queues]
    if unknown:
        from esf.errors import UnknownQueue

        raise UnknownQueue(f"unknown queue(s) {', '.join(unknown)}; configured: "
                           f"{', '.join(foundation.settings.jobs.all_queues)}")
    name = hostname or f"esf-{profile.name}-{os.getpid()}-{uuid.uuid4().hex[:4]}@%h"
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={profile.pool}",
        f"--concurrency={profile.concurrency}",
        f"--prefetch-multiplier={profile.prefetch_multiplier}",
        f"--queues={','.join(queues)}",
        f"--hostname={name}",
        "--without-mingle",
        "--without-gossip",
    ]
    if foundation.settings.workers.send_events:
        argv.append("--events")
    limit = foundation.settings.workers.max_tasks_per_child or profile.max_tasks_per_child
    if limit and profile.pool == "prefork":
        argv.append(f"--max-tasks-per-child={limit}")
    return argv


def run_worker(foundation: Foundation, profile: WorkerProfile, *, loglevel: str = "INFO") -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown).

    A broker that does not answer yet does not keep the worker from starting: a durability check that
    needs it (``jobs.redis_durability_check = "error"``) runs once the worker has connected, before it
    consumes (see ``signals.check_broker_when_connected``).
    """
    from esf.errors import ServiceUnavailable

    from .signals import check_broker_when_connected, take_refusal

    try:
        foundation._runtime.check_broker()
    except ServiceUnavailable as exc:
        log.warning("%s", exc)
        check_broker_when_connected(foundation)
    foundation.celery.worker_main(worker_argv(foundation, profile, loglevel=loglevel))
    refusal = take_refusal(foundation)
    if refusal is not None:  # the broker answered at last, and was refused: the worker stopped for it
        raise refusal
