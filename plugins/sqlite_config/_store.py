"""``SqliteConfigStore``: one transaction per batch, versions polled across processes."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from esf._sqlite import enable_wal, fork_guard
from esf.config import Commit, HistoryEntry, NodeStatus, NotifyCallback, StoredConfig
from esf.errors import ConcurrencyConflict, ServiceUnavailable

__all__ = ["SqliteConfigStore"]

log = logging.getLogger("esf.config.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    secrets TEXT NOT NULL,
    updated_at REAL NOT NULL
);
INSERT OR IGNORE INTO config_state (id, version, document, secrets, updated_at) VALUES (1, 0, '{}', '[]', 0);
CREATE TABLE IF NOT EXISTS config_history (
    version INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS config_nodes (
    node_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_seen REAL NOT NULL
);
"""


class SqliteConfigStore:
    """The configuration in a SQLite file, shared by the processes of one machine.

    A commit is one ``BEGIN IMMEDIATE`` transaction: check the version, write
    the document, the version and the history entry, trim the history. Other
    processes learn of it by polling the version every ``poll_interval_s``.

    Parameters:
        path: the database file (created with its directory).
        history_limit: versions kept.
        poll_interval_s: seconds between two version checks of the notification thread.
        timeout_s: how long to wait for a lock held by another process before ``ServiceUnavailable``.
    """

    kind = "sqlite"

    def __init__(
        self, path: str | Path, *, history_limit: int = 1000, poll_interval_s: float = 0.5, timeout_s: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.identity = f"sqlite:{self.path.resolve()}"
        self.history_limit = history_limit
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    # -- connection ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
            enable_wal(conn, self.timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as exc:
                if self._conn is not None and self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise ServiceUnavailable(f"SQLite config store {self.path}: {exc}") from exc

    # -- reading -------------------------------------------------------------

    def read(self) -> StoredConfig:
        with self._db() as db:
            row = db.execute("SELECT version, document, secrets FROM config_state WHERE id = 1").fetchone()
        return StoredConfig(int(row[0]), json.loads(row[1]), frozenset(json.loads(row[2])))

    def version(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT version FROM config_state WHERE id = 1").fetchone()
        return int(row[0])

    def entry(self, version: int) -> HistoryEntry | None:
        with self._db() as db:
            row = db.execute("SELECT entry FROM config_history WHERE version = ?", (version,)).fetchone()
        return HistoryEntry.from_dict(json.loads(row[0])) if row else None

    def history(self, limit: int) -> list[HistoryEntry]:
        with self._db() as db:
            rows = db.execute("SELECT entry FROM config_history ORDER BY version DESC LIMIT ?", (limit,)).fetchall()
        return [HistoryEntry.from_dict(json.loads(r[0])) for r in rows]

    # -- writing -------------------------------------------------------------

    def commit(self, commit: Commit) -> int:
        new = commit.base_version + 1
        document = json.dumps(commit.document, separators=(",", ":"))
        secrets = json.dumps(sorted(commit.secrets))
        entry = json.dumps(commit.entry.to_dict(), separators=(",", ":"))
        with fork_guard, self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            actual = int(db.execute("SELECT version FROM config_state WHERE id = 1").fetchone()[0])
            if actual != commit.base_version:
                db.execute("ROLLBACK")
                raise ConcurrencyConflict(
                    f"expected version {commit.base_version}, the store is at {actual}",
                    expected=commit.base_version,
                    actual=actual,
                )
            db.execute(
                "UPDATE config_state SET version = ?, document = ?, secrets = ?, updated_at = ? WHERE id = 1",
                (new, document, secrets, commit.entry.at),
            )
            db.execute("INSERT OR REPLACE INTO config_history (version, entry) VALUES (?, ?)", (new, entry))
            db.execute("DELETE FROM config_history WHERE version <= ?", (new - self.history_limit,))
            db.execute("COMMIT")
        return new

    # -- nodes ---------------------------------------------------------------

    def beat(self, node: NodeStatus, ttl_s: float) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO config_nodes (node_id, status, last_seen) VALUES (?, ?, ?)",
                (node.node_id, json.dumps(node.to_dict()), node.last_seen),
            )
            # Keep the table small: forget nodes dead for ten TTLs.
            db.execute("DELETE FROM config_nodes WHERE last_seen < ?", (time.time() - 10 * ttl_s,))

    def forget(self, node_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM config_nodes WHERE node_id = ?", (node_id,))

    def nodes(self, ttl_s: float) -> list[NodeStatus]:
        with self._db() as db:
            rows = db.execute(
                "SELECT status FROM config_nodes WHERE last_seen >= ? ORDER BY node_id", (time.time() - ttl_s,)
            ).fetchall()
        return [NodeStatus.from_dict(json.loads(r[0])) for r in rows]

    def forget_gone(self, ttl_s: float) -> list[str]:
        with self._db() as db:
            rows = db.execute("SELECT node_id FROM config_nodes WHERE last_seen < ?", (time.time() - ttl_s,)).fetchall()
            gone = sorted(str(r[0]) for r in rows)
            db.executemany("DELETE FROM config_nodes WHERE node_id = ?", [(g,) for g in gone])
        return gone

    def notify(self, version: int) -> None:
        """Nothing to send: every process polls the version every ``poll_interval_s``."""

    # -- notifications ---------------------------------------------------------

    def watch(self, callback: NotifyCallback) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, args=(callback,), name="esf-config-sqlite", daemon=True)
        self._thread.start()

    def _poll(self, callback: NotifyCallback) -> None:
        last: int | None = None
        while not self._stop.wait(self.poll_interval_s):
            try:
                version = self.version()
            except ServiceUnavailable as exc:
                log.debug("config poll failed: %s", exc)
                last = None
                continue
            if version != last:
                reconnected = last is None
                last = version
                try:
                    callback(None if reconnected else version)
                except Exception:
                    log.exception("config: notification callback failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteConfigStore({str(self.path)!r})"
