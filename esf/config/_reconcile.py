"""Cluster-wide reconciliation of applied versions (the ``esf.config.reconcile`` service task).

Each process already reconciles itself (it reads the store's version every
``config.reconcile_interval_s``). This pass looks at all of them from outside:
it clears the heartbeats of processes that are gone, announces the current
version again for processes that stay behind (pub/sub is at-most-once), and
returns a ``config.diverged`` record for each of them, whose event id and content
are fixed per (store, node, its version, the store's version), so running the pass
again records it once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._service import ConfigService
    from ._types import NodeStatus


@dataclass(frozen=True)
class Reconciliation:
    """What one pass found and did.

    Parameters:
        store_version: the store's version when the pass ran.
        live: live processes (heartbeat within ``config.node_ttl_s``).
        gone: ids of processes whose heartbeats were cleared.
        diverged: ``config.diverged`` event payloads, one per process still behind
            ``config.diverged_after_s`` after the next version was committed (``event_id`` included).
        republished: True when the current version was announced again.
    """

    store_version: int
    live: int
    gone: tuple[str, ...] = ()
    diverged: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    republished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"store_version": self.store_version, "live": self.live, "gone": list(self.gone),
                "diverged": [dict(d) for d in self.diverged], "republished": self.republished}


def reconcile(service: ConfigService) -> Reconciliation:
    """Run one reconciliation pass over every process using ``service``'s store.

    Raises:
        ServiceUnavailable: the store cannot be reached (nothing is half-done that a rerun would not redo).
    """
    settings = service._settings
    store = service._store
    gone = store.forget_gone(settings.node_ttl_s)
    store_version = store.version()
    live = store.nodes(settings.node_ttl_s)
    behind = service._diverged(store_version)
    if behind:
        store.notify(store_version)
    diverged = tuple(_diverged_event(store.identity, n, store_version) for n in behind)
    return Reconciliation(store_version=store_version, live=len(live), gone=tuple(gone), diverged=diverged,
                          republished=bool(behind))


def _diverged_event(identity: str, node: NodeStatus, store_version: int) -> dict[str, Any]:
    # Only fields fixed for (node, version, store version): a rerun appends the very same event (a no-op).
    name = f"esf-config:{identity}#diverged:{node.node_id}@{node.version}/{store_version}"
    return {"type": "config.diverged", "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "node_id": node.node_id, "host": node.host, "pid": node.pid, "version": node.version,
            "store_version": store_version}
