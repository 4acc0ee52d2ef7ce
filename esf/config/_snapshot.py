"""The immutable per-process snapshot, its path cache, and its copy on local disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..secrets import Secret
from ._paths import deep_merge, freeze, is_under, lookup
from ._types import StoredConfig

__all__ = ["NOT_FOUND", "LocalSnapshotFile", "PathCache", "Snapshot"]

log = logging.getLogger("esf.config")

#: Most distinct paths cached per snapshot (a cache miss past this is computed each time).
MAX_CACHED_PATHS = 10_000


class Snapshot:
    """One applied version: the stored document, and the read-only effective tree (defaults below it)."""

    __slots__ = ("secret_prefixes", "stored", "tree", "version")

    def __init__(self, stored: StoredConfig, defaults: Mapping[str, Any], secret_prefixes: Collection[str]) -> None:
        self.stored = stored
        self.version = stored.version
        self.secret_prefixes = frozenset(secret_prefixes) | stored.secrets
        effective = deep_merge(defaults, stored.document)
        self.tree: Mapping[str, Any] = freeze(_wrap_secrets(effective, self.secret_prefixes, ""))


def _wrap_secrets(tree: Mapping[str, Any], prefixes: frozenset[str], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, str) and any(is_under(sub, p) for p in prefixes):
            out[key] = Secret(value)
        elif isinstance(value, Mapping) and any(is_under(p, sub) or is_under(sub, p) for p in prefixes):
            out[key] = _wrap_secrets(value, prefixes, sub)
        else:
            out[key] = value
    return out


#: Marks a path with no value in a ``PathCache``.
NOT_FOUND: Any = object()


class PathCache:
    """``path -> value`` of one snapshot: ``values`` holds paths that exist, ``missing`` those that do not.

    ``values`` is an exact ``dict`` (the interpreter's fast path for ``d[k]``);
    ``get`` reads it first. Both are bounded by ``MAX_CACHED_PATHS``; past
    that, lookups are computed each time.
    """

    __slots__ = ("missing", "snapshot", "values")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.values: dict[str | None, Any] = {None: snapshot.tree}
        self.missing: set[str] = set()

    def resolve(self, path: str, parts: tuple[str, ...]) -> Any:
        """Look ``path`` up in the snapshot and remember the answer (``NOT_FOUND`` when absent)."""
        if path in self.missing:
            return NOT_FOUND
        try:
            value = lookup(self.snapshot.tree, parts)
        except KeyError:
            if len(self.missing) < MAX_CACHED_PATHS:
                self.missing.add(path)
            return NOT_FOUND
        if len(self.values) < MAX_CACHED_PATHS:
            self.values[path] = value
        return value


class LocalSnapshotFile:
    """The last applied snapshot on local disk, so that a cold start with the store down still serves it.

    The file holds no secret values: secret leaves are left out (they are
    absent after a cold start from this file until the store is back).
    Written atomically (temporary file, then rename).
    """

    def __init__(self, directory: Path, identity: str) -> None:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.path = directory / f"config-snapshot-{digest}.json"
        self._lock = threading.Lock()
        self._saved_version = -1

    def save(self, stored: StoredConfig, secret_prefixes: Collection[str]) -> None:
        """Write ``stored`` without its secrets, unless a newer version was saved; errors are logged."""
        with self._lock:
            if stored.version < self._saved_version:
                return
            self._save(stored, secret_prefixes)
            self._saved_version = stored.version

    def _save(self, stored: StoredConfig, secret_prefixes: Collection[str]) -> None:
        document = _drop(stored.document, frozenset(secret_prefixes) | stored.secrets, "")
        data = {"version": stored.version, "document": document, "saved_at": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".config-snapshot-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("config: cannot write the local snapshot %s: %s", self.path, exc)

    def load(self) -> StoredConfig | None:
        """The saved snapshot, or ``None`` when there is none or it is unreadable (logged)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            return StoredConfig(int(data["version"]), dict(data["document"]), frozenset())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("config: ignoring the unreadable local snapshot %s: %s", self.path, exc)
            return None


def _drop(tree: Mapping[str, Any], prefixes: frozenset[str], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        sub = f"{path}.{key}" if path else key
        if any(is_under(sub, p) for p in prefixes):
            continue
        out[key] = _drop(value, prefixes, sub) if isinstance(value, Mapping) else value
    return out

