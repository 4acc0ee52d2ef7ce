"""SqliteBackends: every backend kind ESF keeps in SQLite files under one data directory (embedded deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._plugins import load_plugin
from ._redis import snapshot_ttl_s

if TYPE_CHECKING:
    from ..cache._types import SharedTier
    from ..config._types import ConfigStore
    from ..jobs._coord import Coordinator
    from ..jobs._gather_store import GatherStore
    from ..jobs._schedule_stores import ScheduleStore
    from ..settings import Settings
    from ..telemetry._store import SnapshotStore

__all__ = ["CONFIG_FILE", "COORD_FILE", "SCHEDULES_FILE", "SNAPSHOTS_FILE", "SqliteBackends"]

#: Files under the data directory, one per backend kind.
CONFIG_FILE = "config.sqlite"
COORD_FILE = "coord.sqlite"
GATHER_FILE = "gather.sqlite"
SCHEDULES_FILE = "schedules.sqlite"
SNAPSHOTS_FILE = "telemetry.sqlite3"


class SqliteBackends:
    """SQLite-backed backends of every kind, one file each under ``data_dir``, shared by the processes
    of one machine (see :mod:`esf._sqlite`). The cache has no SQLite tier: its in-process tier serves alone.

    Parameters:
        data_dir: the directory of the files (``settings.data_path``).
        settings: the settings each backend takes its limits and timeouts from.
    """

    name = "sqlite"

    def __init__(self, data_dir: Path, settings: Settings) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings

    def __repr__(self) -> str:
        return f"<SqliteBackends {self.data_dir}>"

    def config_store(self) -> ConfigStore:
        cfg = self.settings.config
        store_class = load_plugin("config.sqlite", setting="config")
        store: ConfigStore = store_class(self.data_dir / CONFIG_FILE, history_limit=cfg.history_limit,
                                         poll_interval_s=cfg.poll_interval_s, timeout_s=cfg.store_timeout_s)
        return store

    def coordinator(self) -> Coordinator:
        from ..jobs import SqliteCoordinator

        return SqliteCoordinator(self.data_dir / COORD_FILE)

    def gather_store(self) -> GatherStore:
        from ..jobs._gather_store import SqliteGatherStore

        return SqliteGatherStore(self.data_dir / GATHER_FILE)

    def schedule_store(self) -> ScheduleStore:
        from ..jobs._schedule_stores import SqliteScheduleStore

        return SqliteScheduleStore(self.data_dir / SCHEDULES_FILE)

    def snapshot_store(self) -> SnapshotStore:
        from ..telemetry import SQLiteSnapshotStore

        return SQLiteSnapshotStore(self.data_dir / SNAPSHOTS_FILE, proc_ttl_s=snapshot_ttl_s(self.settings))

    def cache_tier(self) -> SharedTier | None:
        return None
