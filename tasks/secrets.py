"""``esf.secrets.refresh``: check leases, tokens and versions of secrets, on the ``esf.secrets`` queue.

The job carries paths, never values. It is scheduled every ``secrets.refresh_interval_s`` seconds
(``esf beat``) when the backend is not ``env`` (environment variables do not change under a process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.services import DefaultSchedule

if TYPE_CHECKING:
    from esf.foundation import Foundation

#: Name of the refresh job (and of its default schedule).
REFRESH_JOB = "esf.secrets.refresh"


def register(foundation: Foundation) -> None:
    """Declare ``esf.secrets.refresh`` and, for a backend that can rotate, its beat schedule."""
    settings = foundation.settings.secrets
    schedules = foundation.settings.services.schedules

    @foundation.services.task(
        "secrets", "refresh", retries=5, backoff=2.0, max_backoff=60.0, retry_on=(ServiceUnavailable,),
        timeout=max(30.0, settings.timeout_s * 6),
        idempotency="it renews and re-reads; a second run finds nothing new to report",
        schedule=DefaultSchedule(every_s=settings.refresh_interval_s,
                                 enabled=schedules and settings.backend != "env",
                                 setting="secrets.refresh_interval_s"))
    def refresh(paths: list[str] | None = None) -> dict[str, Any]:
        """Renew the token and due leases, re-issue revoked ones, read ``paths`` and watched secrets again."""
        return foundation.secrets.refresh(tuple(paths or ()))
