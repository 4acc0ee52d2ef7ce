"""One factory per technology: the backends of every service, and the one rule that picks the technology.

``backends_for(settings)`` decides once: Redis when a Redis URL is configured (``redis_url``, or a Redis
broker), else SQLite files under ``data_dir``. The services ask the returned object for their backend
(``config_store()``, ``coordinator()``, ``schedule_store()``, ``snapshot_store()``, ``cache_tier()``); no
other module reads the Redis URL to choose one. The event store, its idempotency ledger and its job
outbox follow ``database_url`` instead, in the ``events.sqlalchemy`` plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from ..errors import SettingsError
from ._redis import RedisBackends, open_redis_client
from ._sqlite import SqliteBackends
from ._types import Backends

if TYPE_CHECKING:
    import redis

    from ..settings import Settings

__all__ = ["TECHNOLOGIES", "Backends", "RedisBackends", "SqliteBackends", "Technology", "backends_for", "open_client"]

Technology = Literal["auto", "redis", "sqlite"]
#: The values of :data:`Technology`.
TECHNOLOGIES: tuple[Technology, ...] = ("auto", "redis", "sqlite")


def backends_for(settings: Settings, *, technology: Technology = "auto", redis_url: str | None = None,
                 redis_client: Callable[[], redis.Redis[bytes]] | None = None,
                 setting: str = "redis_url") -> Backends:
    """The factory of ``settings``' technology: :class:`RedisBackends` when a Redis URL is configured,
    else :class:`SqliteBackends` under ``settings.data_path``.

    Parameters:
        technology: ``"redis"`` or ``"sqlite"`` to force one (a service's own setting, such as
            ``telemetry.store``); ``"auto"`` applies the rule above.
        redis_url: overrides ``settings.effective_redis_url``.
        redis_client: returns the shared Redis client (see :class:`RedisBackends`).
        setting: the setting named in the error.

    Raises:
        SettingsError: ``technology`` is ``"redis"`` and no Redis is configured, or is not a technology.
    """
    if technology not in TECHNOLOGIES:
        raise SettingsError(f"{setting}: unknown technology {technology!r}; expected one of {', '.join(TECHNOLOGIES)}",
                            setting=setting)
    url = redis_url or settings.effective_redis_url
    if technology == "auto":
        technology = "redis" if url else "sqlite"
    if technology == "redis":
        if not url:
            raise SettingsError(f"{setting} is 'redis' but no Redis is configured; set ESF_REDIS_URL",
                                setting=setting)
        return RedisBackends(url, settings, client=redis_client)
    return SqliteBackends(settings.data_path, settings)


def open_client(settings: Settings) -> redis.Redis[bytes]:
    """A new coordination client on ``settings``' Redis (``fnd.redis`` keeps one per process).

    Raises:
        SettingsError: no Redis is configured.
    """
    url = settings.effective_redis_url
    if not url:
        raise SettingsError("redis_url: this needs Redis; set ESF_REDIS_URL", setting="redis_url")
    return open_redis_client(url, settings)
