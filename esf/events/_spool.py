"""A durable, ordered, node-local spool of appends waiting for the database.

One SQLite file (WAL, ``synchronous=FULL``) shared by every process of the
node. Each entry is one append call (a batch, kept all-or-nothing), in the
order the calls were made. Entries are removed only after the database
confirmed the write; an entry that can never be written (its id is stored
with other content) is moved to the ``dead`` table and logged, never dropped.
Only one process drains the spool at a time (an ``flock`` on a lock file
beside it), so the order of the file is the order of the writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._validation import PreparedEvent

__all__ = ["Spool", "SpoolEntry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    n INTEGER NOT NULL,
    batch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    n INTEGER NOT NULL,
    batch TEXT NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled append call."""

    id: int
    events: tuple[PreparedEvent, ...]


class Spool:
    """The spool file at ``path`` (created with its directory when missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._connection().executescript(_SCHEMA)  # autocommit; CREATE … IF NOT EXISTS is idempotent

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def put(self, events: list[PreparedEvent]) -> int:
        """Append one batch durably (fsync'd before returning); returns its entry id."""
        payload = json.dumps([e.to_json() for e in events], separators=(",", ":"), ensure_ascii=False)
        with self._conn() as conn:
            cur = conn.execute(
                "INSERT INTO spool (created_at, n, batch) VALUES (?, ?, ?)", (time.time(), len(events), payload)
            )
            entry_id = cur.lastrowid
        assert entry_id is not None
        return int(entry_id)

    def peek(self, limit: int = 100) -> list[SpoolEntry]:
        """The oldest ``limit`` entries, oldest first."""
        rows = self._connection().execute("SELECT id, batch FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [SpoolEntry(int(r[0]), tuple(PreparedEvent.from_json(e) for e in json.loads(r[1]))) for r in rows]

    def remove(self, entry_id: int) -> None:
        """Forget an entry whose events are stored."""
        with self._conn() as conn:
            conn.execute("DELETE FROM spool WHERE id = ?", (entry_id,))

    def bury(self, entry_id: int, error: str) -> None:
        """Move an entry that can never be written to the ``dead`` table, with the reason."""
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO dead (id, created_at, failed_at, n, batch, error) "
                "SELECT id, created_at, ?, n, batch, ? FROM spool WHERE id = ?",
                (time.time(), error, entry_id),
            )
            conn.execute("DELETE FROM spool WHERE id = ?", (entry_id,))

    def contains(self, entry_id: int) -> bool:
        """Whether the entry is still waiting."""
        row = self._connection().execute("SELECT 1 FROM spool WHERE id = ?", (entry_id,)).fetchone()
        return row is not None

    def dead_error(self, entry_id: int) -> str | None:
        """The reason an entry was buried, or ``None``."""
        row = self._connection().execute("SELECT error FROM dead WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else str(row[0])

    def depth(self) -> int:
        """Number of events (not entries) waiting."""
        row = self._connection().execute("SELECT COALESCE(SUM(n), 0) FROM spool").fetchone()
        return int(row[0])

    def dead_count(self) -> int:
        """Number of entries set aside as unwritable."""
        row = self._connection().execute("SELECT COUNT(*) FROM dead").fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def drain_lock(self) -> Iterator[bool]:
        """Yield True when this process may drain the spool now (one drainer per node), else False."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every connection this object opened (call when no other thread uses it)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
