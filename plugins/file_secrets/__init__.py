"""Secrets from a JSON file, for development (the ``file`` backend).

The file holds one object per path: ``{"db": {"password": "…", "user": "app"}}``. It is read again
when its modification time or size changes, so editing it rotates the secrets it holds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esf.errors import SecretNotFound, ServiceUnavailable, ValidationError
from esf.secrets import Secret, SecretData

if TYPE_CHECKING:
    from esf.settings import Settings

__all__ = ["FileSecretsProvider"]


class FileSecretsProvider:
    """Reads ``{path: {key: value}}`` from a JSON file.

    Parameters:
        path: the JSON file; values must be strings.
    """

    name = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._doc: dict[str, dict[str, Secret]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> FileSecretsProvider:
        """The file ``settings.secrets.file_path`` (default ``<data_dir>/secrets.json``)."""
        return cls(settings.secrets.file_path or settings.data_path / "secrets.json")

    def _load(self) -> dict[str, dict[str, Secret]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SecretNotFound(f"the secrets file {str(self.path)!r} does not exist") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._doc
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ServiceUnavailable(f"the secrets file {str(self.path)!r} cannot be read: "
                                         f"{type(exc).__name__}") from None
            except ValueError:
                # The message of a JSON error quotes the text around it: never show it.
                raise ValidationError(f"the secrets file {str(self.path)!r} is not valid JSON") from None
            if not isinstance(raw, dict) or not all(
                isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in raw.values()
            ):
                raise ValidationError(f"the secrets file {str(self.path)!r} must be an object "
                                      "{path: {key: string}}")
            self._doc = {p: {k: Secret(v) for k, v in keys.items()} for p, keys in raw.items()}
            self._stamp = stamp
            return self._doc

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The keys under ``path`` in the file.

        Raises:
            ValidationError: ``version`` was given (the file keeps one version), or the file is malformed.
            SecretNotFound: no such path, or no file.
        """
        if version is not None:
            raise ValidationError(f"secret {path!r}: the file backend keeps one version; drop version=")
        doc = self._load()
        if path not in doc:
            raise SecretNotFound(f"secret {path!r} is not in {str(self.path)!r}", path=path)
        return SecretData(path, dict(doc[path]), issued_at=time.time())

    def issue(self, path: str) -> SecretData:
        """Raises ValidationError: a file has no dynamic secrets."""
        raise ValidationError(f"secret {path!r}: the file backend has no dynamic secrets (leases); use vault")

    def renew(self, lease_id: str, increment_s: float | None = None) -> float:
        """Raises SecretNotFound: there are no leases."""
        raise SecretNotFound(f"lease {lease_id!r}: the file backend holds no leases")

    def lease_ttl(self, lease_id: str) -> float:
        """Raises SecretNotFound: there are no leases."""
        raise SecretNotFound(f"lease {lease_id!r}: the file backend holds no leases")

    def revoke(self, lease_id: str) -> None:
        """Nothing to revoke."""

    def maintain(self) -> dict[str, Any]:
        """Nothing to keep alive."""
        return {"action": "none"}

    def status(self) -> dict[str, Any]:
        """The file read."""
        return {"backend": self.name, "file": str(self.path)}

    def close(self) -> None:
        """Nothing to close."""
