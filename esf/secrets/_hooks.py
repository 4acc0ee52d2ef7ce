"""Rotation hooks: clients that take their credentials from the secrets service and follow rotations.

Each builds a client whose *new* connections read the current credentials, and subscribes to the
secret so that a rotation retires idle connections at once while busy ones finish their work first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from ..errors import ValidationError
from ._types import SecretChange
from ._value import Secret

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

    from ._service import SecretsService

__all__ = ["SecretCredentialProvider", "SecretHeaderAuth", "rotating_engine", "rotating_redis"]

log = logging.getLogger("esf.secrets")

Source = Literal["lease", "kv"]

#: Key of the password in a credentials secret (a key name, not a password).
PASSWORD_KEY = "password"  # noqa: S105


def _credentials(secrets: SecretsService, path: str, source: Source) -> Mapping[str, Secret]:
    if source == "lease":
        return secrets.lease(path).data
    return secrets.read(path).data


def rotating_engine(secrets: SecretsService, path: str, url: str, *, source: Source = "lease",
                    username_key: str = "username", password_key: str = PASSWORD_KEY,
                    **engine_kwargs: Any) -> Engine:
    """A SQLAlchemy engine whose connections log in with the credentials at ``path``.

    Each new connection reads the current credentials (a lease renewed or issued again as
    needed). When the secret rotates, the pool is replaced: idle connections are closed, those in
    use finish their transaction with the old credentials and are closed when returned. A login
    refused because the lease was revoked makes the service check the lease, issue a new one and
    try once more, without waiting for the next refresh. A revocation drops the PostgreSQL role
    under open sessions: the statement that meets such a session fails (the session is gone), the
    connection is discarded, a new lease is issued, and the next statements run under it.

    Parameters:
        path: a dynamic secret (``database/creds/app``, ``source="lease"``) or a KV secret (``source="kv"``).
        url: the database URL without credentials (``postgresql+psycopg://db:5432/app``).
        username_key, password_key: the keys holding the user name and the password.
        engine_kwargs: passed to ``sqlalchemy.create_engine`` (``pool_pre_ping=True`` is the default).

    Raises:
        ValidationError: ``source`` is neither ``lease`` nor ``kv``.
    """
    import sqlalchemy
    from sqlalchemy import event

    if source not in ("lease", "kv"):
        raise ValidationError(f"rotating_engine: source must be 'lease' or 'kv', got {source!r}")
    engine_kwargs.setdefault("pool_pre_ping", True)
    engine = sqlalchemy.create_engine(url, **engine_kwargs)

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        for attempt in (1, 2):
            creds = _credentials(secrets, path, source)
            cparams["user"] = creds[username_key].reveal()
            cparams["password"] = creds[password_key].reveal()
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if attempt == 2 or source != "lease" or not secrets.leases.verify(path):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    if source == "lease":
        @event.listens_for(engine, "handle_error")
        def role_dropped(context: Any) -> None:
            # A revoked lease drops its PostgreSQL role under open sessions ("invalid role OID", 42704):
            # such a connection is dead. Discard it, and let the next connection use a new lease.
            code = getattr(context.original_exception, "sqlstate", None)
            if code == "42704" and "role" in str(context.original_exception):
                context.is_disconnect = True
                try:
                    secrets.leases.verify(path)
                except Exception:
                    log.warning("secrets: could not check the lease of %r", path, exc_info=True)

    def rotated(change: SecretChange) -> None:
        engine.dispose()  # closes idle connections; checked-out ones close when returned

    secrets.subscribe(path, rotated)
    return engine


class SecretCredentialProvider:
    """redis-py credentials (its ``credential_provider=``) read from the secrets service at each new connection.

    Parameters:
        path, password_key: where the password is; ``username_key``: the ACL user's key (``None``: no user).
    """

    def __init__(self, secrets: SecretsService, path: str, *, password_key: str = PASSWORD_KEY,
                 username_key: str | None = None, source: Source = "kv") -> None:
        self.secrets = secrets
        self.path = path
        self.password_key = password_key
        self.username_key = username_key
        self.source = source

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        creds = _credentials(self.secrets, self.path, self.source)
        password = creds[self.password_key].reveal()
        if self.username_key is None:
            return (password,)
        return (creds[self.username_key].reveal(), password)


def rotating_redis(secrets: SecretsService, path: str, url: str, *, password_key: str = PASSWORD_KEY,
                   username_key: str | None = None, source: Source = "kv", **redis_kwargs: Any) -> redis.Redis[bytes]:
    """A Redis client whose connections authenticate with the secret at ``path``.

    On rotation, idle connections are dropped (the next command opens one with the new password);
    connections in use finish their command first. Redis keeps connections that authenticated
    before a password change, so nothing is cut.
    """
    import redis

    provider = SecretCredentialProvider(secrets, path, password_key=password_key, username_key=username_key,
                                        source=source)
    client: redis.Redis[bytes] = redis.Redis.from_url(
        url, credential_provider=cast("Any", provider), **redis_kwargs)

    def rotated(change: SecretChange) -> None:
        client.connection_pool.disconnect(inuse_connections=False)

    secrets.subscribe(path, rotated)
    return client


class SecretHeaderAuth:
    """An HTTP ``Authorization`` header from a secret, current at each request.

    Usable as ``requests``' ``auth=`` (it is called with the request), or through :meth:`headers`
    with any client. The value comes from the service's cache, so a rotation shows on the next
    request after the service reads the new version.

    Parameters:
        path, key: where the token is; ``scheme``: ``Bearer`` (``None``: the header is the bare value).
    """

    def __init__(self, secrets: SecretsService, path: str, key: str | None = None, *,
                 scheme: str | None = "Bearer", header: str = "Authorization") -> None:
        self.secrets = secrets
        self.path = path
        self.key = key
        self.scheme = scheme
        self.header = header

    def headers(self) -> dict[str, str]:
        """``{header: "<scheme> <token>"}`` with the current token (never log the result)."""
        token = self.secrets.get(self.path, self.key).reveal()
        return {self.header: f"{self.scheme} {token}" if self.scheme else token}

    def __call__(self, request: Any) -> Any:
        request.headers.update(self.headers())
        return request

    def __repr__(self) -> str:
        return f"SecretHeaderAuth(path={self.path!r}, key={self.key!r})"
