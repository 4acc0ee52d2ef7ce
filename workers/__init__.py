"""Worker entry points: run a Celery worker for a Foundation with a profile."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

from .profiles import PROFILES, WorkerProfile, get_profile

if TYPE_CHECKING:
    from esf.foundation import Foundation

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
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    foundation._runtime.check_broker()
    foundation.celery.worker_main(worker_argv(foundation, profile, loglevel=loglevel))
