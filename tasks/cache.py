"""``esf.cache.refresh`` and ``esf.cache.warm``: reload cache entries in a worker, on the ``esf.cache`` queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.cache import REFRESH_JOB, WARM_JOB

if TYPE_CHECKING:
    from esf.foundation import Foundation

CACHE_SERVICE = "cache"


def register(foundation: Foundation) -> None:
    queue = foundation.settings.jobs.service_queue(CACHE_SERVICE)

    # A loader can fail for any reason (its database, its API): retried a few times, then dead-lettered.
    @foundation.job(name=REFRESH_JOB, queue=queue, retries=3, backoff=1.0, max_backoff=30.0,
                    retry_on=(Exception,), timeout=120)
    def refresh(namespace: str, key: str, loader: str, args: list[Any], kwargs: dict[str, Any], ttl: float,
                refresh_after: float | None = None, claim: str | None = None) -> dict[str, Any]:
        """Run the registered ``loader`` and store its value as ``key`` of ``namespace`` (refresh-ahead)."""
        foundation.cache.refresh(namespace, key, loader, args, kwargs, ttl, refresh_after, claim)
        return {"namespace": namespace, "key": key}

    @foundation.job(name=WARM_JOB, queue=queue, retries=3, backoff=1.0, max_backoff=30.0,
                    retry_on=(Exception,), timeout=600)
    def warm(loader: str, keys: list[str], namespace: str, ttl: float | None = None) -> dict[str, Any]:
        """Load every key with the registered ``loader`` and store them (a warmer)."""
        stored = foundation.cache.run_warm(loader, keys, namespace, ttl)
        return {"namespace": namespace, "stored": stored}
