"""``esf.jobs.gather_deadline``: close a scatter-gather at its deadline (an ETA job on the ``esf.jobs`` queue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esf.errors import ServiceUnavailable
from esf.jobs._gather import DEADLINE_SERVICE, DEADLINE_VERB

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    @foundation.services.task(DEADLINE_SERVICE, DEADLINE_VERB, retries=10, backoff=1.0, max_backoff=30.0,
                              retry_on=(ServiceUnavailable,), timeout=60,
                              idempotency="it closes the gather only while it is open; a closed one is left as it is")
    def gather_deadline(gather_id: str) -> str:
        """Close the gather if it is still open; returns what was done (``closing``, ``failing``, ``settled``)."""
        return foundation.jobs.gathers.expire(gather_id)
