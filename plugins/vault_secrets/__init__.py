"""HashiCorp Vault (or OpenBao) through hvac: KV version 2, dynamic secrets with leases, token upkeep.

Authentication: ``token``, ``approle`` or ``kubernetes`` (the pod's service-account token). The
token is renewed while it is renewable and obtained again by logging in when it is not (AppRole,
Kubernetes). Every call has the ``secrets.timeout_s`` timeout. Errors name the path, never a value.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from esf.errors import MissingDependency, PermissionDenied, SecretNotFound, ServiceUnavailable, SettingsError
from esf.secrets import Secret, SecretData

if TYPE_CHECKING:
    from esf.settings import Settings

__all__ = ["VaultSecretsProvider"]

T = TypeVar("T")


def _hvac() -> Any:
    try:
        import hvac
    except ImportError:  # pragma: no cover - hvac is a dependency of the vault extra
        raise MissingDependency("the vault secrets backend needs hvac: pip install 'esf[vault]'") from None
    return hvac


class VaultSecretsProvider:
    """Secrets from Vault KV v2 (``read``) and from dynamic engines (``issue``), through hvac.

    Parameters:
        url: Vault's address (``https://vault:8200``).
        auth: ``token``, ``approle`` or ``kubernetes``.
        token: the token (``token`` auth).
        role_id, secret_id: AppRole credentials (``approle`` auth).
        kubernetes_role, kubernetes_jwt_path: the Vault role and the service-account token file.
        auth_mount: mount of the auth method (default: the method's name).
        mount: mount of the KV version 2 engine read by ``read``.
        namespace: Vault Enterprise namespace.
        verify: verify TLS certificates; ``ca_cert``: a CA bundle to verify them with.
        timeout_s: timeout of each HTTP call, in seconds.
        renew_margin: renew the token when less than this fraction of its TTL is left.

    Raises:
        SettingsError: the credentials of the chosen auth method are missing.
    """

    name = "vault"

    def __init__(self, url: str, *, auth: str = "token", token: Secret | None = None, role_id: str | None = None,
                 secret_id: Secret | None = None, kubernetes_role: str | None = None,
                 kubernetes_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token",
                 auth_mount: str | None = None, mount: str = "secret", namespace: str | None = None,
                 verify: bool = True, ca_cert: str | None = None, timeout_s: float = 5.0,
                 renew_margin: float = 0.5) -> None:
        if auth == "token" and not token:
            raise SettingsError("secrets.vault_token: token auth needs a token (ESF_SECRETS_VAULT_TOKEN)",
                                setting="secrets.vault_token")
        if auth == "approle" and (not role_id or not secret_id):
            raise SettingsError("secrets.vault_role_id: AppRole auth needs vault_role_id and vault_secret_id",
                                setting="secrets.vault_role_id")
        if auth == "kubernetes" and not kubernetes_role:
            raise SettingsError("secrets.vault_kubernetes_role: Kubernetes auth needs a Vault role",
                                setting="secrets.vault_kubernetes_role")
        if auth not in ("token", "approle", "kubernetes"):
            raise SettingsError(f"secrets.vault_auth: {auth!r} is not token, approle or kubernetes",
                                setting="secrets.vault_auth")
        hvac = _hvac()
        self.url = url
        self.auth = auth
        self.mount = mount
        self.auth_mount = auth_mount or auth
        self.renew_margin = renew_margin
        self._token = token
        self._role_id = role_id
        self._secret_id = secret_id
        self._k8s_role = kubernetes_role
        self._k8s_jwt_path = kubernetes_jwt_path
        self._login_lock = threading.Lock()
        self._logged_in = False
        self._last_login: float | None = None
        self._exc = hvac.exceptions
        self._pid = os.getpid()
        self.client = hvac.Client(url=url, token=token.reveal() if token else None, namespace=namespace,
                                  verify=ca_cert if (verify and ca_cert) else verify, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> VaultSecretsProvider:
        """The provider described by ``settings.secrets`` (``vault_*`` fields)."""
        s = settings.secrets
        return cls(s.vault_url, auth=s.vault_auth, token=s.vault_token, role_id=s.vault_role_id,
                   secret_id=s.vault_secret_id, kubernetes_role=s.vault_kubernetes_role,
                   kubernetes_jwt_path=s.vault_kubernetes_jwt_path, auth_mount=s.vault_auth_mount,
                   mount=s.vault_mount, namespace=s.vault_namespace, verify=s.vault_verify,
                   ca_cert=s.vault_ca_cert, timeout_s=s.timeout_s, renew_margin=s.renew_margin)

    # -- authentication ------------------------------------------------------------

    def login(self) -> None:
        """Obtain a new token (AppRole or Kubernetes); the token auth method cannot log in again.

        Raises:
            PermissionDenied: the method is ``token``, or Vault refused the credentials.
            ServiceUnavailable: Vault is unreachable.
        """
        if self.auth == "token":
            raise PermissionDenied("Vault refused the token and token auth cannot log in again; "
                                   "set a new ESF_SECRETS_VAULT_TOKEN or use approle")
        with self._login_lock:
            def do() -> None:
                if self.auth == "approle":
                    assert self._secret_id is not None
                    self.client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id.reveal(),
                                                   mount_point=self.auth_mount)
                else:
                    jwt = Path(self._k8s_jwt_path).read_text(encoding="utf-8").strip()
                    self.client.auth.kubernetes.login(role=self._k8s_role, jwt=jwt, mount_point=self.auth_mount)
            self._guard(do, "login", relogin=False)
            self._logged_in = True
            self._last_login = time.time()

    def _ensure_login(self) -> None:
        if self.auth != "token" and not self._logged_in:
            self.login()

    def _guard(self, fn: Callable[[], T], what: str, *, relogin: bool = True,
               missing: tuple[type[BaseException], ...] = ()) -> T:
        """Run one hvac call; translate its errors (a refused token triggers one login and a retry)."""
        import requests

        if self._pid != os.getpid():
            # A forked child (a prefork pool process) must not share the parent's keep-alive sockets.
            self.client.adapter.session = requests.Session()
            self._pid = os.getpid()
        exc = self._exc
        try:
            return fn()
        except (exc.Forbidden, exc.Unauthorized):
            if not relogin or self.auth == "token" or self._token_valid():
                # A valid token refused by policy: logging in again would only mint more tokens.
                raise PermissionDenied(f"Vault refused {what} (permission denied)", path=what) from None
        except exc.InvalidPath:
            raise SecretNotFound(f"Vault has nothing at {what}", path=what) from None
        except missing:
            raise SecretNotFound(f"Vault has no {what}", path=what) from None
        except (exc.VaultDown, exc.InternalServerError, exc.BadGateway, exc.RateLimitExceeded,
                requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise ServiceUnavailable(f"Vault at {self.url} is unreachable for {what}: {type(e).__name__}",
                                     path=what) from None
        # The token expired or was revoked: log in again, then retry once.
        self._logged_in = False
        self.login()
        return self._guard(fn, what, relogin=False, missing=missing)

    def _token_valid(self) -> bool:
        """Whether Vault still accepts the current token (an unreachable Vault counts as not known: False)."""
        try:
            self.client.auth.token.lookup_self()
        except Exception:
            return False
        return True

    def maintain(self) -> dict[str, Any]:
        """Renew the token when less than ``renew_margin`` of its TTL is left and it is renewable; log in
        again when it is not renewable (or refused). Returns ``{"action", "ttl_s", "renewable"}``.

        Raises:
            PermissionDenied: the token is refused and the auth method cannot log in again.
            ServiceUnavailable: Vault is unreachable.
        """
        self._ensure_login()
        try:
            info = self._guard(lambda: self.client.auth.token.lookup_self(), "auth/token/lookup-self",
                               relogin=False)["data"]
        except PermissionDenied:
            self.login()
            return {"action": "login", **self._token_ttl()}
        ttl = float(info.get("ttl") or 0)
        full = float(info.get("creation_ttl") or 0)
        if ttl <= 0 or full <= 0 or ttl > full * self.renew_margin:
            return {"action": "none", "ttl_s": ttl, "renewable": bool(info.get("renewable"))}
        if info.get("renewable"):
            try:
                auth = self._guard(lambda: self.client.auth.token.renew_self(), "auth/token/renew-self",
                                   relogin=False)["auth"]
                new_ttl = float(auth.get("lease_duration") or 0)
                if new_ttl > ttl + 1:
                    return {"action": "renewed", "ttl_s": new_ttl, "renewable": bool(auth.get("renewable"))}
            except PermissionDenied:
                pass
        if self.auth == "token":
            return {"action": "none", "ttl_s": ttl, "renewable": False}
        self.login()  # not renewable, or at its maximum TTL: a new token
        return {"action": "login", **self._token_ttl()}

    def _token_ttl(self) -> dict[str, Any]:
        info = self._guard(lambda: self.client.auth.token.lookup_self(), "auth/token/lookup-self")["data"]
        return {"ttl_s": float(info.get("ttl") or 0), "renewable": bool(info.get("renewable"))}

    # -- secrets ---------------------------------------------------------------------

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The KV v2 secret at ``path`` under ``mount`` (``version``: that version; deleted ones are not found).

        Raises:
            SecretNotFound: no such secret or version (or the version is deleted).
            PermissionDenied: the token may not read it.
            ServiceUnavailable: Vault is unreachable.
        """
        self._ensure_login()
        resp = self._guard(lambda: self.client.secrets.kv.v2.read_secret_version(
            path=path, version=version, mount_point=self.mount, raise_on_deleted_version=True),
            f"{self.mount}/{path}" + (f"?version={version}" if version else ""))
        body = resp.get("data") or {}
        values = body.get("data")
        if values is None:
            raise SecretNotFound(f"secret {path!r}: version {version or 'latest'} is deleted", path=path)
        meta = body.get("metadata") or {}
        return SecretData(path, {str(k): Secret(str(v)) for k, v in values.items()}, version=meta.get("version"),
                          issued_at=time.time())

    def issue(self, path: str) -> SecretData:
        """Read a dynamic secret (``database/creds/app``): new credentials under a new lease.

        Raises:
            SecretNotFound: no such engine or role.
        """
        self._ensure_login()
        resp = self._guard(lambda: self.client.read(path), path)
        if not resp:
            raise SecretNotFound(f"Vault has nothing at {path}", path=path)
        data = resp.get("data") or {}
        return SecretData(path, {str(k): Secret(str(v)) for k, v in data.items()},
                          lease_id=resp.get("lease_id") or None,
                          lease_duration_s=float(resp.get("lease_duration") or 0),
                          renewable=bool(resp.get("renewable")), issued_at=time.time())

    def renew(self, lease_id: str, increment_s: float | None = None) -> float:
        """Renew ``lease_id``; returns its new TTL in seconds.

        Raises:
            SecretNotFound: the lease is gone or cannot be renewed.
        """
        self._ensure_login()
        resp = self._guard(lambda: self.client.sys.renew_lease(
            lease_id=lease_id, increment=int(increment_s) if increment_s else None),
            f"lease {lease_id}", missing=(self._exc.InvalidRequest,))
        return float(resp.get("lease_duration") or 0)

    def lease_ttl(self, lease_id: str) -> float:
        """Seconds left on ``lease_id``.

        Raises:
            SecretNotFound: the lease is gone (revoked or expired).
        """
        self._ensure_login()
        resp = self._guard(lambda: self.client.sys.read_lease(lease_id=lease_id), f"lease {lease_id}",
                           missing=(self._exc.InvalidRequest,))
        return float((resp.get("data") or {}).get("ttl") or 0)

    def revoke(self, lease_id: str) -> None:
        """Revoke ``lease_id`` now."""
        self._ensure_login()
        self._guard(lambda: self.client.sys.revoke_lease(lease_id=lease_id), f"lease {lease_id}")

    def status(self) -> dict[str, Any]:
        """Address, auth method, mount, and the token's TTL (no token)."""
        out: dict[str, Any] = {"backend": self.name, "url": self.url, "auth": self.auth, "mount": self.mount,
                               "last_login": self._last_login}
        try:
            self._ensure_login()
            out.update(self._token_ttl())
        except (PermissionDenied, ServiceUnavailable) as exc:
            out["error"] = exc.code
        return out

    def close(self) -> None:
        """Close the HTTP session."""
        session = getattr(getattr(self.client, "adapter", None), "session", None)
        if session is not None:
            session.close()
