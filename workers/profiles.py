"""Worker profiles: which queues a worker consumes, with which pool and concurrency.

``esf worker --profile NAME`` picks one; ``--queues``, ``--pool`` and
``--concurrency`` override its fields. Prefetch is one job per process
(``worker_prefetch_multiplier = 1``) in every profile: with late
acknowledgement a prefetched job is one more job a dead worker strands.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from esf.errors import ValidationError

if TYPE_CHECKING:
    from esf.settings import JobSettings

Pool = Literal["prefork", "threads", "solo"]
#: Which configured queues a profile without explicit ``queues`` consumes: all of them, only ESF's
#: service queues (``esf.*``), or only the application's.
Scope = Literal["all", "services", "application"]


@dataclass(frozen=True)
class WorkerProfile:
    """How one kind of worker runs."""

    name: str
    #: Queues to consume; empty means the configured queues of ``scope``.
    queues: tuple[str, ...] = ()
    pool: Pool = "prefork"
    concurrency: int = 2
    prefetch_multiplier: int = 1
    #: Replace a pool process after this many jobs (bounds leaks); None: never. The setting
    #: ``workers.max_tasks_per_child`` overrides it.
    max_tasks_per_child: int | None = None
    #: Configured queues consumed when ``queues`` is empty.
    scope: Scope = "all"

    def resolve_queues(self, jobs: JobSettings) -> tuple[str, ...]:
        """The queues this profile consumes under ``jobs`` (``settings.jobs``): ``queues`` when set, else
        those of its ``scope`` (the service queues follow ``jobs.service_namespace``)."""
        if self.queues:
            return self.queues
        if self.scope == "services":
            return jobs.service_queues
        if self.scope == "application":
            return jobs.queues
        return jobs.all_queues

    def with_overrides(self, *, queues: tuple[str, ...] | None = None, pool: Pool | None = None,
                       concurrency: int | None = None) -> WorkerProfile:
        if concurrency is not None and concurrency < 1:
            raise ValidationError("concurrency must be at least 1")
        return replace(
            self,
            queues=queues if queues else self.queues,
            pool=pool or self.pool,
            concurrency=concurrency or self.concurrency,
        )


#: Built-in profiles.
PROFILES: dict[str, WorkerProfile] = {
    "default": WorkerProfile("default"),
    "io": WorkerProfile("io", pool="threads", concurrency=16, max_tasks_per_child=None),
    "cpu": WorkerProfile("cpu", pool="prefork", concurrency=0),
    "solo": WorkerProfile("solo", pool="solo", concurrency=1, max_tasks_per_child=None),
    # ESF's own work apart from application jobs: prefork, so every service task's time limit holds.
    "services": WorkerProfile("services", pool="prefork", concurrency=2, scope="services"),
    "application": WorkerProfile("application", scope="application"),
}


def get_profile(name: str) -> WorkerProfile:
    """The profile ``name``. Raises ValidationError naming the known ones."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValidationError(f"unknown worker profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
    if profile.concurrency == 0:
        import os

        profile = replace(profile, concurrency=os.cpu_count() or 1)
    return profile
