"""Build the configuration service from Settings, on the store of ``esf.backends.backends_for``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._service import AuditSink, ConfigService

if TYPE_CHECKING:
    from ..settings import Settings
    from ..telemetry import Telemetry
    from ._types import ConfigStore

__all__ = ["create_config_service", "esf_defaults"]


def esf_defaults(settings: Settings) -> dict[str, Any]:
    """ESF's own settings published read-only under ``esf`` (no URLs, no credentials)."""
    out: dict[str, Any] = {"node": settings.node}
    for section in ("jobs", "workers", "events", "config", "telemetry"):
        values = dataclasses.asdict(getattr(settings, section))
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return out


def create_config_service(
    settings: Settings,
    *,
    redis_url: str | None = None,
    audit: AuditSink | None = None,
    node_id: str | None = None,
    start: bool = True,
    store: ConfigStore | None = None,
    telemetry: Callable[[], Telemetry] | None = None,
) -> ConfigService:
    """The configuration service for ``settings``.

    The store is the one of :func:`esf.backends.backends_for` (Redis, keys under
    ``settings.config.redis_prefix``, when a Redis is configured or ``redis_url`` given;
    else SQLite in ``<data_dir>/config.sqlite``). The last snapshot is kept in ``data_dir``.
    Never raises because the store is down: the service starts degraded.

    Parameters:
        audit: sink for ``config.updated`` payloads (connect it to the event store's spooled append).
        node_id: this process's name in heartbeats.
        start: start notifications, reconciliation and heartbeats now.
        store: the store to use as it is (injected); built from the settings when ``None``.
        telemetry: returns the telemetry service, or None (no metrics).
    """
    from ..backends import backends_for

    if store is None:
        store = backends_for(settings, redis_url=redis_url).config_store()
    return ConfigService(
        store,
        settings=settings.config,
        data_dir=settings.data_path,
        node_id=node_id,
        audit=audit,
        esf_defaults=esf_defaults(settings),
        start=start,
        telemetry=telemetry,
    )

