"""Redis configuration store: one Lua script per batch, pub/sub notifications."""

from __future__ import annotations

from ._store import RedisConfigStore

__all__ = ["RedisConfigStore"]
