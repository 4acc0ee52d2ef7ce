"""The cache's shared tier on Redis: versioned namespaces, leased locks, pub/sub invalidation."""

from __future__ import annotations

from ._tier import RedisCacheTier

__all__ = ["RedisCacheTier"]
