"""Secrets from environment variables: ``<prefix><PATH>_<KEY>`` (the ``env`` backend).

``get("db", "password")`` reads ``SECRET_DB_PASSWORD`` (``/`` ``-`` and ``.`` become ``_``; upper
case). A variable named ``<prefix><PATH>`` alone is the key ``value``. There are no versions and no leases.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from esf.errors import SecretNotFound, ValidationError
from esf.secrets import Secret, SecretData

if TYPE_CHECKING:
    from esf.settings import Settings

__all__ = ["EnvSecretsProvider"]


def _name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", path).upper()


class EnvSecretsProvider:
    """Reads secrets from an environment mapping (``os.environ`` unless one is given).

    Parameters:
        prefix: prefix of every variable (``SECRET_``).
        environ: the mapping to read; read anew at each call, so a changed variable is seen.
    """

    name = "env"

    def __init__(self, prefix: str = "SECRET_", environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self._environ = environ

    @classmethod
    def from_settings(cls, settings: Settings) -> EnvSecretsProvider:
        """The provider of ``settings.secrets.env_prefix``."""
        return cls(settings.secrets.env_prefix)

    def read(self, path: str, version: int | None = None) -> SecretData:
        """Every ``<prefix><PATH>_<KEY>`` variable as key ``key`` (lower case).

        Raises:
            ValidationError: ``version`` was given (environment variables have no versions).
            SecretNotFound: no variable of ``path``.
        """
        if version is not None:
            raise ValidationError(f"secret {path!r}: the env backend keeps no versions; drop version=")
        env = os.environ if self._environ is None else self._environ
        base = self.prefix + _name(path)
        data = {k[len(base) + 1:].lower(): Secret(v) for k, v in env.items() if k.startswith(base + "_")}
        if base in env:
            data["value"] = Secret(env[base])
        if not data:
            raise SecretNotFound(f"secret {path!r}: no variable {base} or {base}_<KEY> is set", path=path)
        return SecretData(path, data, issued_at=time.time())

    def issue(self, path: str) -> SecretData:
        """Raises ValidationError: environment variables have no dynamic secrets."""
        raise ValidationError(f"secret {path!r}: the env backend has no dynamic secrets (leases); use vault")

    def renew(self, lease_id: str, increment_s: float | None = None) -> float:
        """Raises SecretNotFound: there are no leases."""
        raise SecretNotFound(f"lease {lease_id!r}: the env backend holds no leases")

    def lease_ttl(self, lease_id: str) -> float:
        """Raises SecretNotFound: there are no leases."""
        raise SecretNotFound(f"lease {lease_id!r}: the env backend holds no leases")

    def revoke(self, lease_id: str) -> None:
        """Nothing to revoke."""

    def maintain(self) -> dict[str, Any]:
        """Nothing to keep alive."""
        return {"action": "none"}

    def status(self) -> dict[str, Any]:
        """The prefix read."""
        return {"backend": self.name, "prefix": self.prefix}

    def close(self) -> None:
        """Nothing to close."""
