"""Subscription handler jobs (``esf.subscription.<name>``) and ``esf.subscriptions.tick``.

A subscription's handler job is declared when the subscription is, with the
subscription's queue and the job options its declaration gives; its body
only decodes the batch and calls the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esf.foundation import Foundation
    from esf.jobs import Job, JobService
    from esf.subscriptions import Subscription, SubscriptionService

#: Runs one dispatcher step of a subscription now (on the ``esf.events`` service queue).
TICK_JOB = "esf.subscriptions.tick"


def declare_handler(jobs: JobService, service: SubscriptionService, sub: Subscription, *, retries: int | None,
                    backoff: float | None, max_backoff: float | None,
                    retry_on: type[BaseException] | tuple[type[BaseException], ...],
                    timeout: float | None) -> Job[Any, Any]:
    """Declare ``sub``'s handler job in ``jobs``; it runs ``service.handle``. Raises ValidationError / UnknownQueue
    for bad options."""
    from esf.subscriptions._service import STORE_BREAKER

    name = sub.name

    # It uses the event store's breaker: a database outage defers it (no retry spent) instead of failing it.
    def handle(batch_id: int, positions: list[int]) -> dict[str, Any]:
        """Run the subscription's handler on one batch of events (given by position)."""
        return service.handle(name, int(batch_id), [int(p) for p in positions])

    return jobs.declare(handle, name=sub.job_name, queue=sub.queue, retries=retries, backoff=backoff,
                        max_backoff=max_backoff, retry_on=retry_on, timeout=timeout, uses=[STORE_BREAKER])


def register(foundation: Foundation) -> None:
    """Declare ``esf.subscriptions.tick``: one dispatcher step of a named subscription, relayed at once."""
    from esf.errors import ServiceUnavailable

    queue = foundation.settings.jobs.service_queue("events")

    @foundation.job(name=TICK_JOB, queue=queue, retries=5, backoff=1.0, max_backoff=30.0,
                    retry_on=(ServiceUnavailable,), timeout=60)
    def tick(name: str) -> dict[str, Any]:
        """Read the subscription's new events into batches and send those that may go."""
        result = foundation.subscriptions.tick(name)
        if result.sent:
            foundation.jobs.outbox.drain()
        return {"read": result.read, "sent": result.sent, "cursor": result.cursor}
