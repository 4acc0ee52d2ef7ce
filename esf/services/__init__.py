"""ESF's own service tasks: one registry of every foundation service's routed work.

Each foundation service (events, config, telemetry, cache, flags, secrets, jobs) does its
background work as ordinary ESF jobs named ``esf.<service>.<verb>`` on its routed
queue ``esf.<service>`` (with ``esf.<service>.dlq``): JSON arguments, lifecycle events
in the job history, correlation ids, dead letters that ``esf dlq`` lists and replays.
A service declares them in ``tasks/<service>.py``::

    def register(foundation: Foundation) -> None:
        s = foundation.settings.services

        @foundation.services.task("events", "prune", retries=3, backoff=30.0, timeout=600,
                                  retry_on=(ServiceUnavailable,),
                                  idempotency="deleting what is older than a cut-off twice deletes nothing more",
                                  schedule=DefaultSchedule(every_s=s.events_prune_every_s,
                                                           enabled=s.schedules and s.events_prune,
                                                           setting="services.events_prune"))
        def prune() -> dict[str, Any]: ...

:class:`ServiceRegistry` (``fnd.services``) lists those declarations, and also every
job declared the plain way (``@fnd.job(queue=settings.jobs.service_queue(...))``) on a
service queue, so ``esf services`` shows all of a service's work.
"""

from __future__ import annotations

from ._registry import ServiceRegistry
from ._types import DefaultSchedule, ServiceTask, ServiceTaskStatus

__all__ = ["DefaultSchedule", "ServiceRegistry", "ServiceTask", "ServiceTaskStatus"]
