"""Value types and the backend interface of the secrets service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ._value import Secret

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Lease", "SecretChange", "SecretData", "SecretsProvider", "Subscriber"]


@dataclass(frozen=True, repr=False)
class SecretData:
    """One read of a secret from a backend: every key as a :class:`Secret`, and where it came from.

    Parameters:
        path: the path it was read at.
        data: key -> value; the values never show in ``repr``.
        version: the KV version (``None`` when the backend keeps no versions).
        lease_id: the lease of a dynamic secret (``None`` for static secrets).
        lease_duration_s: seconds the lease (or a static secret's suggested refresh) lasts from ``issued_at``.
        renewable: whether the lease can be renewed.
        issued_at: wall-clock time (epoch seconds) of the read.
    """

    path: str
    data: Mapping[str, Secret]
    version: int | None = None
    lease_id: str | None = None
    lease_duration_s: float | None = None
    renewable: bool = False
    issued_at: float = 0.0

    def __repr__(self) -> str:
        return (f"SecretData(path={self.path!r}, keys={sorted(self.data)!r}, version={self.version!r}, "
                f"lease_id={self.lease_id!r})")


@dataclass(frozen=True, repr=False)
class Lease:
    """A dynamic secret held by this process (database credentials …), renewed before it expires.

    Parameters:
        path: the path it was issued from (``database/creds/app``).
        lease_id: the backend's lease id (not a secret: it cannot be used to read the value).
        data: the credentials, each a :class:`Secret` (``lease.data["password"].reveal()``).
        issued_at: epoch seconds when it was issued.
        expires_at: epoch seconds when it ends unless renewed.
        renewable: whether the backend accepts renewals.
    """

    path: str
    lease_id: str
    data: Mapping[str, Secret]
    issued_at: float
    expires_at: float
    renewable: bool

    def __getitem__(self, key: str) -> Secret:
        return self.data[key]

    def __repr__(self) -> str:
        return f"Lease(path={self.path!r}, lease_id={self.lease_id!r}, keys={sorted(self.data)!r})"


@dataclass(frozen=True)
class SecretChange:
    """What a subscriber hears: the secret at ``path`` has a new value (never the value itself).

    ``kind`` is ``"version"`` (a new KV version, or a changed static value) or ``"lease"``
    (a dynamic secret re-issued: new credentials, the old lease no longer renewed).
    """

    path: str
    kind: Literal["version", "lease"]
    version: int | None = None
    previous_version: int | None = None
    lease_id: str | None = None
    previous_lease_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (no secret value)."""
        return {"path": self.path, "kind": self.kind, "version": self.version,
                "previous_version": self.previous_version, "lease_id": self.lease_id,
                "previous_lease_id": self.previous_lease_id, **dict(self.details)}


#: Called with a :class:`SecretChange` after the service already serves the new value.
Subscriber = Callable[[SecretChange], None]


@runtime_checkable
class SecretsProvider(Protocol):
    """A secrets backend. Registered as ``secrets.<name>`` in the ``esf.plugins`` entry-point group,
    where the entry point is a class with ``from_settings(settings)``.

    Every method may raise :class:`~esf.errors.ServiceUnavailable` (the backend cannot be reached or
    timed out), :class:`~esf.errors.SecretNotFound` and :class:`~esf.errors.PermissionDenied`. Error
    messages never contain a secret value.
    """

    #: Short name shown in health and status (``vault``, ``env``, ``file``).
    name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretsProvider:
        """The provider configured by ``settings.secrets``.

        Raises:
            SettingsError: a required setting is missing or invalid.
        """
        ...

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The secret at ``path`` (the latest version, or ``version``).

        Raises:
            SecretNotFound: no secret (or no such version) at ``path``.
            ValidationError: ``version`` was given and the backend keeps no versions.
        """
        ...

    def issue(self, path: str) -> SecretData:
        """A new dynamic secret with a lease (``database/creds/app``).

        Raises:
            ValidationError: the backend has no dynamic secrets.
        """
        ...

    def renew(self, lease_id: str, increment_s: float | None = None) -> float:
        """Renew a lease; returns its new duration in seconds from now.

        Raises:
            SecretNotFound: the lease is gone (revoked or expired) or cannot be renewed.
        """
        ...

    def lease_ttl(self, lease_id: str) -> float:
        """Seconds left on a lease.

        Raises:
            SecretNotFound: the lease is gone (revoked or expired).
        """
        ...

    def revoke(self, lease_id: str) -> None:
        """Revoke a lease now (its credentials stop working)."""
        ...

    def maintain(self) -> dict[str, Any]:
        """Keep the backend's own credentials alive (renew a token, log in again); returns a JSON-safe status."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-safe description of the connection (no credential)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
