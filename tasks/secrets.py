"""``esf.secrets.refresh``: check leases, tokens and versions of secrets, on the ``esf.secrets`` queue.

The job carries paths, never values. It is scheduled every ``secrets.refresh_interval_s`` seconds
(``esf beat``) when the backend is not ``env`` (environment variables do not change under a process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable

if TYPE_CHECKING:
    from esf.foundation import Foundation

#: Name of the refresh job (and of its default schedule).
REFRESH_JOB = "esf.secrets.refresh"


def register(foundation: Foundation) -> None:
    """Declare ``esf.secrets.refresh`` and, for a backend that can rotate, its beat schedule."""
    settings = foundation.settings.secrets
    queue = foundation.settings.jobs.service_queue("secrets")

    @foundation.job(name=REFRESH_JOB, queue=queue, retries=5, backoff=2.0, max_backoff=60.0,
                    retry_on=(ServiceUnavailable,), timeout=max(30.0, settings.timeout_s * 6))
    def refresh(paths: list[str] | None = None) -> dict[str, Any]:
        """Renew the token and due leases, re-issue revoked ones, read ``paths`` and watched secrets again."""
        return foundation.secrets.refresh(tuple(paths or ()))

    if settings.backend != "env":
        foundation.schedule(REFRESH_JOB, every=settings.refresh_interval_s)(refresh)
