"""``create_telemetry``: the Telemetry service from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exporter_settings import exporter_defaults, exporter_options
from ._service import Telemetry

if TYPE_CHECKING:
    from ._store import SnapshotStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["create_store", "create_telemetry", "exporter_defaults", "exporter_options"]


def create_store(settings: Settings, redis_url: str | None = None) -> SnapshotStore | None:
    """The shared store chosen by ``settings.telemetry.store`` (``None`` for ``none``).

    Raises
    ------
    SettingsError
        When ``store = "redis"`` and no Redis URL is configured.
    """
    from ..backends import Technology, backends_for

    kind = settings.telemetry.store
    if kind == "none":
        return None
    technology: Technology = "redis" if kind == "redis" else "sqlite" if kind == "sqlite" else "auto"
    backends = backends_for(settings, technology=technology, redis_url=redis_url, setting="telemetry.store")
    return backends.snapshot_store()


def create_telemetry(settings: Settings, *, redis_url: str | None = None, node_id: str | None = None,
                     store: SnapshotStore | None = None) -> Telemetry:
    """Build the Telemetry service (``fnd.telemetry``) from settings.

    Parameters
    ----------
    settings:
        ``settings.telemetry`` configures it; the shared store is the one of
        :func:`esf.backends.backends_for` (Redis when configured, else SQLite under ``settings.data_dir``).
    redis_url:
        Overrides the Redis used as shared store.
    node_id:
        Overrides ``settings.node`` in process ids.
    store:
        The shared store to use as it is (injected); built from the settings when ``None``.

    Raises
    ------
    SettingsError
        When the store settings are inconsistent.
    ValidationError
        When a configured exporter is unknown or refuses its options (for example Prometheus
        without credentials).

    Returns
    -------
    The service. Its background thread starts with the first metric; call ``close()`` at shutdown
    (in Celery's ``worker_process_shutdown`` for prefork children, which skip ``atexit``).
    """
    ts = settings.telemetry
    if store is None and ts.enabled:
        store = create_store(settings, redis_url)
    return Telemetry(ts, store=store, node=node_id or settings.node,
                     exporter_call_timeout_s=ts.exporter_call_timeout_s)
