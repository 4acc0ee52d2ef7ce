"""``create_telemetry``: the Telemetry service from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import SettingsError
from ._exporting import canonical_name
from ._service import Telemetry
from ._store import RedisSnapshotStore, SnapshotStore, SQLiteSnapshotStore

if TYPE_CHECKING:
    from ..settings import Settings, TelemetrySettings

#: File of the embedded shared store, under ``Settings.data_dir``.
SQLITE_FILE = "telemetry.sqlite3"


def exporter_defaults(ts: TelemetrySettings) -> dict[str, dict[str, Any]]:
    """Options of the built-in exporters taken from the settings (credentials included, as Secrets).

    ``configure_exporters`` lays the options it is given over these, so the configuration service can
    enable Prometheus without holding its password.
    """
    return {
        "telemetry.prometheus": {
            "address": ts.prometheus_address,
            "port": ts.prometheus_port,
            "user": ts.prometheus_user,
            "password": ts.prometheus_password,
            "auth": ts.prometheus_auth,
        },
        "telemetry.statsd": {"host": ts.statsd_host, "port": ts.statsd_port, "prefix": ts.statsd_prefix},
        "telemetry.log": {"level": ts.log_level},
    }


def exporter_options(ts: TelemetrySettings) -> dict[str, dict[str, Any]]:
    """The exporters named in ``ts.exporters``, each with its options from the settings."""
    defaults = exporter_defaults(ts)
    return {canonical_name(n): dict(defaults.get(canonical_name(n), {})) for n in ts.exporters}


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


def create_telemetry(settings: Settings, *, redis_url: str | None = None, node_id: str | None = None) -> Telemetry:
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
    store = create_store(settings, redis_url) if ts.enabled else None
    return Telemetry(
        store=store,
        node=node_id or settings.node,
        max_label_sets=ts.max_label_sets,
        max_metrics=ts.max_metrics,
        push_interval_s=ts.push_interval_s,
        export_interval_s=ts.export_interval_s,
        exporter_buffer=ts.exporter_buffer,
        exporter_options=exporter_options(ts),
        exporter_defaults=exporter_defaults(ts),
        breaker_failures=ts.breaker_failures,
        breaker_reset_s=ts.breaker_reset_s,
        exporter_call_timeout_s=ts.exporter_call_timeout_s,
        enabled=ts.enabled,
    )
