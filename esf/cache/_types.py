"""The cache's interfaces (the shared tier a backend implements, the value codec) and its value types."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._json import check_json
from ..errors import SerializationError, ValidationError

__all__ = [
    "DEFAULT_NAMESPACE",
    "Cache",
    "CacheHealth",
    "CacheStats",
    "Codec",
    "Invalidation",
    "InvalidationCallback",
    "JsonCodec",
    "NamespaceStats",
    "SharedTier",
    "check_key",
    "check_namespace",
]

#: The namespace of calls that name none.
DEFAULT_NAMESPACE = "default"
#: Keys: 1 to 512 characters, no control characters.
KEY_RE = re.compile(r"^[^\x00-\x1f\x7f\ud800-\udfff]{1,512}$")
#: Namespaces: letters, digits, ``_ . -``; 1 to 64 characters.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_key(key: object) -> str:
    """Return ``key`` when it is a valid cache key.

    Raises:
        ValidationError: not a string of 1-512 characters without control characters.
    """
    if not isinstance(key, str) or not KEY_RE.match(key):
        shown = ascii(key) if not isinstance(key, str) or len(key) <= 80 else ascii(key[:80] + "…")
        raise ValidationError(
            f"cache key {shown} is invalid: a key is a string of 1 to 512 characters without control "
            "characters or lone surrogates",
            key_type=type(key).__name__,
        )
    return key


def check_namespace(name: object) -> str:
    """Return ``name`` when it is a valid namespace name.

    Raises:
        ValidationError: not 1-64 letters, digits, ``_``, ``.`` or ``-``.
    """
    if not isinstance(name, str) or not NAMESPACE_RE.match(name):
        raise ValidationError(
            f"cache namespace {name!r} is invalid: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


class Codec(Protocol):
    """Turns values into bytes and back; a namespace may declare its own (the default is JSON)."""

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``.

        Raises:
            SerializationError: ``value`` cannot be encoded.
        """
        ...

    def decode(self, data: bytes) -> Any:
        """The value ``encode`` turned into ``data``."""
        ...


class JsonCodec:
    """Values as compact JSON (no NaN or infinity; keys of objects must be strings)."""

    def encode(self, value: Any) -> bytes:
        """The UTF-8 JSON of ``value``.

        Raises:
            SerializationError: ``value`` is not JSON (a set, bytes, an object, NaN …).
        """
        # The walk first: json.dumps would turn the key 1 into "1" (a value that reads back changed) and
        # recurse without bound on deep nesting.
        check_json(value, "cache value")
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cache value is not JSON: {exc}") from None

    def decode(self, data: bytes) -> Any:
        """The value of UTF-8 JSON ``data``."""
        return json.loads(data)


@dataclass(frozen=True)
class Invalidation:
    """One message on the invalidation channel.

    ``op`` is ``delete`` (drop ``key`` of ``namespace``), ``bump`` (drop the whole
    ``namespace``, now at ``version``). ``origin`` names the process that sent it.
    """

    op: Literal["delete", "bump"]
    namespace: str
    origin: str
    key: str | None = None
    version: int | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"op": self.op, "n": self.namespace, "o": self.origin}
        if self.key is not None:
            data["k"] = self.key
        if self.version is not None:
            data["v"] = self.version
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Invalidation:
        """Parse a message.

        Raises:
            ValidationError: not a message of this format.
        """
        try:
            data = json.loads(raw)
            op = data["op"]
            if op not in ("delete", "bump"):
                raise ValueError(op)
            version = data.get("v")
            return cls(op, str(data["n"]), str(data["o"]), data.get("k"), int(version) if version is not None else None)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValidationError(f"not a cache invalidation message: {exc!r}") from None


#: Called by :meth:`SharedTier.watch` for each message, and with ``None`` after each (re)subscription
#: (messages sent while not subscribed are lost: the listener must drop what it holds).
InvalidationCallback = Callable[[Invalidation | None], None]


class SharedTier(Protocol):
    """The cache shared by every process (Redis). Every method raises
    :class:`~esf.errors.ServiceUnavailable` when the store cannot be reached.

    Entries live under a namespace *version*: bumping the version makes every
    entry of the namespace unreachable at once (they expire by their TTL).
    """

    def version(self, namespace: str) -> int:
        """The namespace's current version (0 before its first bump)."""
        ...

    def get(self, namespace: str, version: int, key: str) -> bytes | None:
        """The entry of ``key`` stored under ``version`` (None when absent)."""
        ...

    def write(self, namespace: str, key: str, data: bytes, ttl_s: float, message: Invalidation, *,
              if_version: int | None = None, if_lock: tuple[str, str] | None = None) -> int | None:
        """Store ``data`` for ``ttl_s`` seconds under the current version and publish ``message``; returns the
        version. Returns None without storing when the version is not ``if_version``, or when the lock
        ``if_lock[0]`` is not held by the token ``if_lock[1]``."""
        ...

    def delete(self, namespace: str, key: str, message: Invalidation) -> None:
        """Remove ``key`` under the current version, free its loader lock ``l:<namespace>:<key>``, publish
        ``message``."""
        ...

    def bump(self, namespace: str, origin: str) -> int:
        """Increment the namespace's version, publish a ``bump`` message; returns the new version."""
        ...

    def acquire(self, name: str, token: str, lease_s: float) -> bool:
        """Take the lock ``name`` for ``lease_s`` seconds unless another token holds it."""
        ...

    def release(self, name: str, token: str) -> None:
        """Free the lock ``name`` if ``token`` still holds it."""
        ...

    def namespaces(self) -> dict[str, int]:
        """Every namespace written to, with its version."""
        ...

    def watch(self, callback: InvalidationCallback, stop: threading.Event, tick: Callable[[], None]) -> None:
        """Deliver invalidation messages to ``callback`` until ``stop`` is set (blocking; reconnects by itself).

        ``tick`` is called about every quarter of a second, whatever the state of the connection.
        """
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


@dataclass(frozen=True)
class NamespaceStats:
    """Counts of one namespace in this process since it started."""

    version: int | None = None
    local_hits: int = 0
    shared_hits: int = 0
    misses: int = 0
    loads: int = 0
    load_errors: int = 0
    load_seconds: float = 0.0
    stampede_waits: int = 0
    degraded: int = 0
    stale_served: int = 0
    refreshes: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits (both tiers) over lookups; 0.0 before any lookup."""
        total = self.local_hits + self.shared_hits + self.misses
        return (self.local_hits + self.shared_hits) / total if total else 0.0


@dataclass(frozen=True)
class CacheStats:
    """What ``fnd.cache.stats()`` reports for this process."""

    backend: Literal["redis", "local"]
    local_entries: int
    local_bytes: int
    evictions: int
    invalidations_received: int
    pending_invalidations: int
    breaker: str
    namespaces: Mapping[str, NamespaceStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "backend", "local_entries", "local_bytes", "evictions", "invalidations_received",
            "pending_invalidations", "breaker")}
        out["namespaces"] = {
            name: {**{k: getattr(s, k) for k in s.__dataclass_fields__}, "hit_ratio": round(s.hit_ratio, 4)}
            for name, s in sorted(self.namespaces.items())
        }
        return out


@dataclass(frozen=True)
class CacheHealth:
    """``ok``, or ``degraded`` while the shared tier is unreachable (reads then use the in-process tier)."""

    status: Literal["ok", "degraded"]
    backend: Literal["redis", "local"]
    breaker: str
    pending_invalidations: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "backend": self.backend, "breaker": self.breaker,
                "pending_invalidations": self.pending_invalidations, "reason": self.reason}


class Cache(Protocol):
    """The cache service's interface (``fnd.cache``): the calls of the default namespace, namespaces, state.

    Every read serves the in-process tier while the shared tier is unreachable and never raises for it.
    """

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key`` or ``default``. Raises ValidationError for a bad key."""
        ...

    def put(self, key: str, value: Any, *, ttl: float | None = None, refresh_after: float | None = None) -> bool:
        """Store ``value``; every other process drops its copy. Raises ValidationError (bad key, ttl, value)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key`` everywhere. Raises ValidationError for a bad key."""
        ...

    def fetch(self, key: str, loader: Callable[[], Any] | str, *, ttl: float | None = None,
              refresh_after: float | None = None, stale_on_error: bool = False) -> Any:
        """The cached value, else the loader's (run once across processes), stored."""
        ...

    def namespace(self, name: str, *, ttl: float | None = None, codec: Codec | None = None) -> Any:
        """The namespace ``name``; ``bump()`` on it invalidates all its keys everywhere."""
        ...

    def stats(self) -> CacheStats:
        """This process's counters."""
        ...

    def health(self) -> CacheHealth:
        """``ok`` or ``degraded``."""
        ...

    def close(self) -> None:
        """Stop background work, release connections."""
        ...
