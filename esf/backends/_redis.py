"""RedisBackends: every backend kind ESF keeps on Redis, built from one URL and one Settings object."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._plugins import load_plugin
from ..lifecycle import track_fork

if TYPE_CHECKING:
    import redis

    from ..cache._types import SharedTier
    from ..config._types import ConfigStore
    from ..jobs._coord import Coordinator
    from ..jobs._gather_store import GatherStore
    from ..jobs._schedule_stores import ScheduleStore
    from ..settings import Settings
    from ..telemetry._store import SnapshotStore

__all__ = ["RedisBackends", "open_redis_client"]


def open_redis_client(url: str, settings: Settings) -> redis.Redis[bytes]:
    """A client for coordination: socket and connect timeouts from ``settings.resilience``, connections
    checked every 10 s."""
    import redis as _redis

    rs = settings.resilience
    return _redis.Redis.from_url(url, socket_timeout=rs.redis_timeout_s,
                                 socket_connect_timeout=rs.redis_connect_timeout_s, health_check_interval=10)


class RedisBackends:
    """Redis-backed backends of every kind, keys under each service's configured prefix.

    Parameters:
        url: the Redis URL.
        settings: the settings each backend takes its prefix, limits and timeouts from.
        client: returns the shared client of the coordinator and the schedule store (a Foundation passes
            its per-process ``fnd.redis``); by default one client per process is opened from ``url``.
    """

    name = "redis"

    def __init__(self, url: str, settings: Settings, *, client: Callable[[], redis.Redis[bytes]] | None = None) -> None:
        self.url = url
        self.settings = settings
        self._client_fn = client
        self._own: redis.Redis[bytes] | None = None
        track_fork(self)

    def __repr__(self) -> str:
        return f"<RedisBackends node={self.settings.node}>"

    def client(self) -> redis.Redis[bytes]:
        """The shared client; a forked process opens its own."""
        if self._client_fn is not None:
            return self._client_fn()
        if self._own is None:
            self._own = open_redis_client(self.url, self.settings)
        return self._own

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): the parent's client stays the parent's."""
        self._own = None

    def config_store(self) -> ConfigStore:
        cfg = self.settings.config
        store_class = load_plugin("config.redis", setting="config")
        store: ConfigStore = store_class(self.url, prefix=cfg.redis_prefix, history_limit=cfg.history_limit,
                                         timeout_s=cfg.store_timeout_s)
        return store

    def coordinator(self) -> Coordinator:
        from ..jobs import RedisCoordinator
        from ..resilience import dependency_breaker

        # Connection errors and timeouts open it: coordination calls then fail at once for a while.
        return RedisCoordinator(self.client(), breaker=dependency_breaker("redis.coordination"))

    def gather_store(self) -> GatherStore:
        from ..jobs._gather_store import RedisGatherStore

        return RedisGatherStore(self.client())

    def schedule_store(self) -> ScheduleStore:
        from ..jobs._schedule_stores import RedisScheduleStore

        # Asked for the client on every call, so a forked process uses its own connection.
        return RedisScheduleStore(self.client)

    def snapshot_store(self) -> SnapshotStore:
        from ..telemetry import RedisSnapshotStore

        ts = self.settings.telemetry
        return RedisSnapshotStore(self.url, key_prefix=ts.key_prefix, proc_ttl_s=snapshot_ttl_s(self.settings))

    def cache_tier(self) -> SharedTier:
        cfg = self.settings.cache
        tier_class = load_plugin("cache.redis", setting="cache.backend")
        return tier_class(self.url, prefix=cfg.redis_prefix, timeout_s=cfg.redis_timeout_s)  # type: ignore[no-any-return]


def snapshot_ttl_s(settings: Settings) -> float:
    """Seconds a process's telemetry snapshot outlives its last push: ten pushes, at least 30 s."""
    return max(30.0, 10 * settings.telemetry.push_interval_s)
