"""Value types of the configuration service (frozen dataclasses) and the store contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._paths import DELETE, freeze, thaw_plain

__all__ = [
    "REDACTED",
    "Change",
    "ChangeEvent",
    "Commit",
    "ConfigHealth",
    "ConfigStore",
    "HistoryEntry",
    "NodeStatus",
    "NotifyCallback",
    "StoredConfig",
]

#: What a secret value looks like in history, diffs, audit payloads and logs.
REDACTED = "**********"


@dataclass(frozen=True)
class Change:
    """One path that changed. ``old is DELETE``: it did not exist; ``new is DELETE``: it was removed."""

    path: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``old``/``new`` are left out when the path was absent."""
        out: dict[str, Any] = {"path": self.path}
        if self.old is not DELETE:
            out["old"] = thaw_plain(self.old)
        if self.new is not DELETE:
            out["new"] = thaw_plain(self.new)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        return cls(str(data["path"]), freeze(data.get("old", DELETE)), freeze(data.get("new", DELETE)))


@dataclass(frozen=True)
class HistoryEntry:
    """One committed version: who, when, what changed, and the whole document (secrets redacted).

    ``rollback_of`` is the version this one restored, when it was written by ``rollback``.
    """

    version: int
    at: float
    actor: str | None
    node: str | None
    changes: tuple[Change, ...]
    document: Mapping[str, Any]
    rollback_of: int | None = None
    #: Paths that held secrets in this version (their values are redacted in ``document``).
    secrets: tuple[str, ...] = ()

    def to_dict(self, *, with_document: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "at": self.at,
            "actor": self.actor,
            "node": self.node,
            "changes": [c.to_dict() for c in self.changes],
            "rollback_of": self.rollback_of,
            "secrets": list(self.secrets),
        }
        if with_document:
            out["document"] = thaw_plain(self.document)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            version=int(data["version"]),
            at=float(data["at"]),
            actor=data.get("actor"),
            node=data.get("node"),
            changes=tuple(Change.from_dict(c) for c in data.get("changes", ())),
            document=freeze(data.get("document", {})),
            rollback_of=data.get("rollback_of"),
            secrets=tuple(data.get("secrets", ())),
        )


@dataclass(frozen=True)
class StoredConfig:
    """The live document of a store: clear values, and which paths hold secrets."""

    version: int
    document: Mapping[str, Any]
    secrets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Commit:
    """What one atomic write sends to the store.

    The store applies it only when its version is still ``base_version``; the
    new version is then ``base_version + 1`` (``entry.version``).
    """

    base_version: int
    document: Mapping[str, Any]
    secrets: frozenset[str]
    entry: HistoryEntry


@dataclass(frozen=True)
class NodeStatus:
    """A process using the configuration: its heartbeat."""

    node_id: str
    host: str
    pid: int
    version: int
    last_seen: float
    started_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "last_seen": self.last_seen,
            "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeStatus:
        return cls(
            node_id=str(data["node_id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            version=int(data["version"]),
            last_seen=float(data["last_seen"]),
            started_at=float(data["started_at"]),
        )


@dataclass(frozen=True)
class ChangeEvent:
    """What a subscriber receives, once per applied version, after the snapshot swap.

    ``changes`` holds the changes at, under or above (a removed parent) the prefix; values are
    read-only, as ``get`` returns them (secrets as :class:`~esf.Secret`). A
    process that catches up over several versions at once (a lost
    notification) delivers one event covering all of them, with
    ``previous_version`` telling how far back it reaches.
    """

    version: int
    previous_version: int
    changes: tuple[Change, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)


@dataclass(frozen=True)
class ConfigHealth:
    """``ok`` or ``degraded``, with the reasons."""

    status: Literal["ok", "degraded"]
    version: int
    store_version: int | None
    store_reachable: bool
    source: Literal["store", "local-snapshot", "empty"]
    last_sync_at: float | None
    diverged: tuple[NodeStatus, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": self.version,
            "store_version": self.store_version,
            "store_reachable": self.store_reachable,
            "source": self.source,
            "last_sync_at": self.last_sync_at,
            "diverged": [n.to_dict() for n in self.diverged],
            "reasons": list(self.reasons),
        }


#: Called by a store's notification channel with a new version, or ``None``
#: after (re)connecting, when notifications may have been lost.
NotifyCallback = Callable[[int | None], None]


class ConfigStore(Protocol):
    """The source of truth of the configuration: one versioned JSON document.

    Every method raises :class:`~esf.errors.ServiceUnavailable` when the
    store cannot be reached within its timeout; nothing else escapes as a
    driver error.
    """

    #: Short backend name (``redis``, ``sqlite``).
    kind: str
    #: Stable identity of the store's location (no credentials), used to name the local snapshot file.
    identity: str

    def read(self) -> StoredConfig:
        """The current document and version (version 0 and ``{}`` before the first commit)."""
        ...

    def version(self) -> int:
        """The current version only (cheap; used by polling and reconciliation)."""
        ...

    def entry(self, version: int) -> HistoryEntry | None:
        """The history entry of ``version``, or ``None`` when it is not (or no longer) kept."""
        ...

    def history(self, limit: int) -> list[HistoryEntry]:
        """The newest ``limit`` history entries, newest first."""
        ...

    def commit(self, commit: Commit) -> int:
        """Apply ``commit`` atomically: document, version + 1, history entry, notification.

        Raises:
            ConcurrencyConflict: the store's version is not ``commit.base_version`` (``actual`` holds it).
            ServiceUnavailable: the store cannot be reached; nothing was applied, or the outcome
                is unknown and a later ``read`` tells.

        Returns:
            The new version, ``commit.base_version + 1``.
        """
        ...

    def beat(self, node: NodeStatus, ttl_s: float) -> None:
        """Record ``node``'s heartbeat; it stays live for ``ttl_s`` seconds.

        A store shared by several hosts times the heartbeat with one clock of its own (the Redis
        server's), never ``node.last_seen``, so that a node's clock skew does not decide its liveness.
        """
        ...

    def forget(self, node_id: str) -> None:
        """Remove a node's heartbeat (on clean close)."""
        ...

    def nodes(self, ttl_s: float) -> list[NodeStatus]:
        """Nodes that have beaten within ``ttl_s`` seconds by the store's clock, sorted by node id."""
        ...

    def forget_gone(self, ttl_s: float) -> list[str]:
        """Remove the heartbeats of nodes silent for more than ``ttl_s`` seconds; returns their ids."""
        ...

    def notify(self, version: int) -> None:
        """Announce ``version`` again to every watching process (a process that missed it resynchronises)."""
        ...

    def watch(self, callback: NotifyCallback) -> None:
        """Start delivering notifications to ``callback`` from a background thread (once per store)."""
        ...

    def close(self) -> None:
        """Stop the notification thread and release connections. Idempotent."""
        ...
