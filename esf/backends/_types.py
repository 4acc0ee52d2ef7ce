"""The interface of a technology's factory: one object builds every backend kind ESF keeps on that technology."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..cache._types import SharedTier
    from ..config._types import ConfigStore
    from ..jobs._coord import Coordinator
    from ..jobs._gather_store import GatherStore
    from ..jobs._schedule_stores import ScheduleStore
    from ..telemetry._store import SnapshotStore

__all__ = ["Backends"]


@runtime_checkable
class Backends(Protocol):
    """Builds the backends of one technology (``"redis"``, ``"sqlite"``) from one Settings object.

    Each method returns a new backend; the caller owns it (and closes it). Building one opens no
    connection: backends connect on first use, so a service starts even when its store is down.
    """

    #: The technology's name, as ``telemetry.store`` and ``cache.backend`` spell it.
    name: str

    def config_store(self) -> ConfigStore:
        """The configuration store, found by name in the ``esf.plugins`` entry points."""
        ...

    def coordinator(self) -> Coordinator:
        """Locks, leases, rate-limit buckets and delivery counters shared by this deployment's processes."""
        ...

    def gather_store(self) -> GatherStore:
        """Scatter-gathers in progress: each member's outcome, and which record closes the gather."""
        ...

    def schedule_store(self) -> ScheduleStore:
        """The schedules ``esf beat`` fires, with their revisions and last runs."""
        ...

    def snapshot_store(self) -> SnapshotStore:
        """Telemetry snapshots of every process, merged into the cluster view."""
        ...

    def cache_tier(self) -> SharedTier | None:
        """The cache's shared tier, or None when this technology has none (the in-process tier serves alone)."""
        ...
