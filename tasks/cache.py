"""``esf.cache.refresh`` and ``esf.cache.warm``: reload cache entries in a worker, on the ``esf.cache`` queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esf.foundation import Foundation

CACHE_SERVICE = "cache"


def register(foundation: Foundation) -> None:
    services = foundation.services

    # A loader can fail for any reason (its database, its API): retried a few times, then dead-lettered.
    @services.task(CACHE_SERVICE, "refresh", retries=3, backoff=1.0, max_backoff=30.0, retry_on=(Exception,),
                   timeout=120, idempotency="it stores the loader's current value; a second run stores it again")
    def refresh(namespace: str, key: str, loader: str, args: list[Any], kwargs: dict[str, Any], ttl: float,
                refresh_after: float | None = None, claim: str | None = None) -> dict[str, Any]:
        """Run the registered ``loader`` and store its value as ``key`` of ``namespace`` (refresh-ahead)."""
        foundation.cache.refresh(namespace, key, loader, args, kwargs, ttl, refresh_after, claim)
        return {"namespace": namespace, "key": key}

    @services.task(CACHE_SERVICE, "warm", retries=3, backoff=1.0, max_backoff=30.0, retry_on=(Exception,),
                   timeout=600, idempotency="it stores the loader's current values; a second run stores them again")
    def warm(loader: str, keys: list[str], namespace: str, ttl: float | None = None) -> dict[str, Any]:
        """Load every key with the registered ``loader`` and store them (a warmer)."""
        stored = foundation.cache.run_warm(loader, keys, namespace, ttl)
        return {"namespace": namespace, "stored": stored}
