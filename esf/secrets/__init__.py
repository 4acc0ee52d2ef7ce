"""Secrets: redacted values, pluggable backends (environment, file, Vault), leases and rotation.

``fnd.secrets.get("db", "password")`` returns a :class:`Secret`; ``fnd.secrets.lease("database/creds/app")``
a :class:`Lease` renewed before it ends; ``fnd.secrets.subscribe(path, callback)`` hears of rotations.
See docs/secrets.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._hooks import SecretCredentialProvider, SecretHeaderAuth, rotating_engine, rotating_redis
from ._refs import SecretRef, has_reference, parse_reference
from ._service import SecretsService, Subscription
from ._types import Lease, SecretChange, SecretData, SecretsProvider, Subscriber
from ._value import Secret

if TYPE_CHECKING:
    from ..settings import Settings
    from ..telemetry import Telemetry
    from ._service import EventSink

__all__ = [
    "Lease",
    "Secret",
    "SecretChange",
    "SecretCredentialProvider",
    "SecretHeaderAuth",
    "SecretData",
    "SecretRef",
    "SecretsProvider",
    "SecretsService",
    "Subscriber",
    "Subscription",
    "create_secrets_service",
    "has_reference",
    "load_provider_class",
    "parse_reference",
    "rotating_engine",
    "rotating_redis",
]

def load_provider_class(name: str) -> Any:
    """The backend class registered as ``secrets.<name>`` (or ``name`` itself when it has a dot).

    Raises:
        SettingsError: no such backend is registered.
    """
    from .._plugins import load_plugin

    return load_plugin(name if "." in name else f"secrets.{name}", setting="secrets.backend")


def create_secrets_service(settings: Settings, *, emit: EventSink | None = None,
                           telemetry: Callable[[], Telemetry | None] | None = None) -> SecretsService:
    """The secrets service configured by ``settings.secrets``.

    Raises:
        SettingsError: unknown backend or missing credentials.
        MissingDependency: the backend needs a package that is not installed (``pip install esf[vault]``).
    """
    provider = load_provider_class(settings.secrets.backend).from_settings(settings)
    return SecretsService(provider, settings.secrets, emit=emit, telemetry=telemetry)
