"""``create_telemetry``: the Telemetry service from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SettingsError
from ._exporter_settings import exporter_defaults, exporter_options
from ._service import Telemetry
from ._store import RedisSnapshotStore, SnapshotStore, SQLiteSnapshotStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["SQLITE_FILE", "create_store", "create_telemetry", "exporter_defaults", "exporter_options"]

#: File of the embedded shared store, under ``Settings.data_dir``.
SQLITE_FILE = "telemetry.sqlite3"


def create_store(settings: Settings, redis_url: str | None = None) -> SnapshotStore | None:
    """The shared store chosen by ``settings.telemetry.store`` (``None`` for ``none``).

    Raises
    ------
    SettingsError
        When ``store = "redis"`` and no Redis URL is configured.
    """
    ts = settings.telemetry
    proc_ttl_s = max(30.0, 10 * ts.push_interval_s)
    url = redis_url or settings.effective_redis_url
    kind = ts.store
    if kind == "auto":
        kind = "redis" if url else "sqlite"
    if kind == "none":
        return None
    if kind == "redis":
        if not url:
            raise SettingsError(
                "telemetry.store: 'redis' needs redis_url (or a Redis broker)", setting="telemetry.store"
            )
        return RedisSnapshotStore(url, key_prefix=ts.key_prefix, proc_ttl_s=proc_ttl_s)
    return SQLiteSnapshotStore(settings.data_path / SQLITE_FILE, proc_ttl_s=proc_ttl_s)


def create_telemetry(settings: Settings, *, redis_url: str | None = None, node_id: str | None = None,
                     store: SnapshotStore | None = None) -> Telemetry:
    """Build the Telemetry service (``fnd.telemetry``) from settings.

    Parameters
    ----------
    settings:
        ``settings.telemetry`` configures it; the shared store is Redis (``redis_url``, else
        ``settings.effective_redis_url``) or SQLite under ``settings.data_dir``.
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
