"""Options of the built-in exporters, taken from ``TelemetrySettings``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._exporting import canonical_name

if TYPE_CHECKING:
    from ..settings import TelemetrySettings

__all__ = ["exporter_defaults", "exporter_options"]


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
