"""The cache: an in-process tier (cachetools) in front of a shared Redis tier, coherent across processes.

    fnd.cache.fetch("user:1", lambda: load_user(1), ttl=60)
    prices = fnd.cache.namespace("prices", ttl=300)
    prices.put("sku-1", {"eur": 12.5}); prices.bump()        # every process drops every price
    @fnd.cached(ttl=30)
    def permissions(user_id: int) -> list[str]: ...
    fnd.cache.invalidate_on("user.updated", key=lambda e: f"user:{e.data['id']}")

Interfaces: :class:`SharedTier` (a backend, registered as ``cache.redis`` in the ``esf.plugins``
entry-point group) and :class:`Codec`. See docs/cache.md for the guarantees and limits.
"""

from __future__ import annotations

from ._bindings import InvalidationRule, KeyOf
from ._facade import REFRESH_JOB, WARM_JOB, Namespace, TwoTierCache
from ._factory import create_cache, create_foundation_cache, load_tier_class
from ._types import (
    DEFAULT_NAMESPACE,
    Cache,
    CacheHealth,
    CacheStats,
    Codec,
    Invalidation,
    InvalidationCallback,
    JsonCodec,
    NamespaceStats,
    SharedTier,
    check_key,
    check_namespace,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "REFRESH_JOB",
    "WARM_JOB",
    "Cache",
    "CacheHealth",
    "CacheStats",
    "Codec",
    "Invalidation",
    "InvalidationCallback",
    "InvalidationRule",
    "JsonCodec",
    "KeyOf",
    "Namespace",
    "NamespaceStats",
    "SharedTier",
    "TwoTierCache",
    "check_key",
    "check_namespace",
    "create_cache",
    "create_foundation_cache",
    "load_tier_class",
]
