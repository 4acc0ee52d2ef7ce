"""Build the cache from Settings (and wire it to the deployment's events, configuration, jobs and telemetry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._plugins import load_plugin
from ._bindings import EventInvalidator
from ._facade import TwoTierCache
from ._service import CacheCore

if TYPE_CHECKING:
    from ..config import ConfigService
    from ..jobs import JobService
    from ..lifecycle import ServiceContext
    from ..settings import Settings
    from ..telemetry import Telemetry
    from ._types import SharedTier

__all__ = ["create_cache", "create_foundation_cache", "load_tier_class"]

def load_tier_class(name: str) -> Any:
    """The shared-tier class registered as ``name`` (``cache.redis``) in ``esf.plugins``.

    Raises:
        SettingsError: nothing is registered under that name.
    """
    return load_plugin(name, setting="cache.backend")


def create_cache(settings: Settings, *, redis_url: str | None = None,
                 telemetry: Callable[[], Telemetry] | None = None, **options: Any) -> TwoTierCache:
    """The cache for ``settings``: the Redis tier behind the in-process one when a Redis is configured
    (``cache.backend`` ``auto`` or ``redis``), else the in-process tier alone.

    Parameters:
        redis_url: overrides the configured Redis (see :func:`esf.backends.backends_for`).
        telemetry: returns the Telemetry the counters go to.
        options: passed to :class:`TwoTierCache` (``dispatch``, ``watch_events``, ``config``).

    Raises:
        SettingsError: ``cache.backend`` is ``redis`` and no Redis is configured.
    """
    from ..backends import Technology, backends_for

    cfg = settings.cache
    tier: SharedTier | None = None
    if cfg.backend != "local":
        technology: Technology = "redis" if cfg.backend == "redis" else "auto"
        tier = backends_for(settings, technology=technology, redis_url=redis_url, setting="cache.backend").cache_tier()
    core = CacheCore(cfg, tier, node=settings.node, telemetry=telemetry)
    return TwoTierCache(core, telemetry=telemetry, **options)


def create_foundation_cache(context: ServiceContext, *, jobs: Callable[[], JobService],
                            config: Callable[[], ConfigService],
                            watch_events: Callable[[EventInvalidator], None]) -> TwoTierCache:
    """``fnd.cache``: refresh-ahead and warmers go to the ``esf.cache`` queue (through ``jobs``), counters to
    telemetry, ``invalidate_on`` watches the event store (``watch_events`` puts ``invalidator`` in front of
    it), ``bind_config`` subscribes to ``config``."""
    settings = context.settings
    telemetry = context.telemetry if settings.telemetry.enabled else None

    def dispatch(job: str, request: dict[str, Any]) -> Any:
        return jobs().get(job).enqueue(**request)

    return create_cache(settings, telemetry=telemetry, dispatch=dispatch, watch_events=watch_events, config=config)
