"""Build the cache from Settings (and wire it to a Foundation's events, configuration, jobs and telemetry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .._plugins import load_plugin
from ._bindings import EventInvalidator, InvalidatingEventStore
from ._facade import TwoTierCache
from ._service import CacheCore

if TYPE_CHECKING:
    from ..foundation import Foundation
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


def create_foundation_cache(foundation: Foundation) -> TwoTierCache:
    """``fnd.cache``: refresh-ahead and warmers go to the ``esf.cache`` queue, counters to ``fnd.telemetry``,
    ``invalidate_on`` watches ``fnd.events``, ``bind_config`` subscribes to ``fnd.config``."""
    settings = foundation.settings
    telemetry = (lambda: foundation.telemetry) if settings.telemetry.enabled else None

    def dispatch(job: str, request: dict[str, Any]) -> Any:
        return foundation.jobs.get(job).enqueue(**request)

    def watch_events(invalidator: EventInvalidator) -> None:
        current = foundation.__dict__.get("events")
        if isinstance(current, InvalidatingEventStore):
            return
        if current is not None:
            wrapped = InvalidatingEventStore(lambda: current, invalidator)
        else:
            # Opened on first use, as ``fnd.events`` is.
            build = cast(Any, type(foundation).__dict__["events"]).func
            wrapped = InvalidatingEventStore(lambda: build(foundation), invalidator)
        foundation.__dict__["events"] = wrapped

    return create_cache(settings, telemetry=telemetry, dispatch=dispatch, watch_events=watch_events,
                        config=lambda: foundation.config)
