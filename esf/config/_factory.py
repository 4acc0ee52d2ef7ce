"""Build the configuration service from Settings: Redis when configured, else SQLite under data_dir."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .._plugins import load_plugin
from ._service import AuditSink, ConfigService

if TYPE_CHECKING:
    from ..settings import Settings
    from ._types import ConfigStore

__all__ = ["create_config_service", "esf_defaults", "load_store_class"]

def load_store_class(name: str) -> Any:
    """The store class registered as ``name`` (``config.redis``, ``config.sqlite``) in ``esf.plugins``.

    Raises:
        SettingsError: nothing is registered under that name.
    """
    return load_plugin(name, setting="config")


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
) -> ConfigService:
    """The configuration service for ``settings``.

    Uses Redis when ``redis_url`` or ``settings.effective_redis_url`` is set
    (keys under ``settings.config.redis_prefix``), else SQLite in
    ``<data_dir>/config.sqlite``. The last snapshot is kept in ``data_dir``.
    Never raises because the store is down: the service starts degraded.

    Parameters:
        audit: sink for ``config.updated`` payloads (connect it to the event store's spooled append).
        node_id: this process's name in heartbeats.
        start: start notifications, reconciliation and heartbeats now.
        store: the store to use as it is (injected); built from the settings when ``None``.
    """
    cfg = settings.config
    url = redis_url or settings.effective_redis_url
    data_dir = settings.data_path
    if store is None:
        store = _store_for(settings, url)
    return ConfigService(
        store,
        settings=cfg,
        data_dir=data_dir,
        node_id=node_id,
        audit=audit,
        esf_defaults=esf_defaults(settings),
        start=start,
    )


def _store_for(settings: Settings, url: str | None) -> ConfigStore:
    """Redis when ``url`` is set, else SQLite under ``data_dir``."""
    cfg = settings.config
    store: ConfigStore
    if url:
        store = load_store_class("config.redis")(
            url, prefix=cfg.redis_prefix, history_limit=cfg.history_limit, timeout_s=cfg.store_timeout_s
        )
    else:
        store = load_store_class("config.sqlite")(
            settings.data_path / "config.sqlite",
            history_limit=cfg.history_limit,
            poll_interval_s=cfg.poll_interval_s,
            timeout_s=cfg.store_timeout_s,
        )
    return store
