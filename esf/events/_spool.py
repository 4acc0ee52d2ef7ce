"""A durable, ordered, node-local spool of appends waiting for the database.

One SQLite file (WAL, ``synchronous=FULL``) shared by every process of the
node. Each entry is one append call (a batch, kept all-or-nothing), in the
order the calls were made. Entries are removed only after the database
confirmed the write; an entry that can never be written (its id is stored
with other content) is moved to the ``dead`` table and logged, never dropped.
An entry whose write keeps failing for another reason (the database is
reachable but refuses it) is retried a bounded number of times, counted in
the ``attempts`` table, then moved to the ``quarantine`` table so that the
entries after it are written, in their order; ``esf events spool list``
shows the quarantine and ``esf events spool retry`` puts entries back in the
spool, at their original place (their id), before every newer entry.
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

from .._sqlite import enable_wal
from ..lifecycle import track_fork
from ._validation import PreparedEvent

__all__ = ["QuarantinedEntry", "Spool", "SpoolEntry"]

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
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    last_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    quarantined_at REAL NOT NULL,
    n INTEGER NOT NULL,
    batch TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled append call."""

    id: int
    events: tuple[PreparedEvent, ...]


@dataclass(frozen=True)
class QuarantinedEntry:
    """A spooled append set aside after failing ``attempts`` times (its events are kept, unwritten).

    ``created_at`` and ``quarantined_at`` are Unix times (seconds); ``error`` is the last failure.
    """

    id: int
    created_at: float
    quarantined_at: float
    n_events: int
    attempts: int
    error: str
    streams: tuple[str, ...]


class Spool:
    """The spool file at ``path`` (created with its directory when missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: This process's connection of each thread (``conn``).
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        #: Connections a forked child inherited: kept, never used nor closed (see after_fork).
        self._inherited: list[object] = []
        track_fork(self)
        self._connection().executescript(_SCHEMA)  # autocommit; CREATE … IF NOT EXISTS is idempotent

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): the parent's connections are not this process's.

        A new ``threading.local`` drops them for every thread at once; they are kept referenced, because
        closing a SQLite connection a parent opened would act on the parent's locks (no I/O at the fork).
        """
        self._inherited.append((self._local, self._all))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all = []

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
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
            conn.execute("DELETE FROM attempts WHERE id = ?", (entry_id,))

    def record_failure(self, entry_id: int, error: str) -> int:
        """Count one more failed write of an entry; returns its failures so far (kept across restarts)."""
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO attempts (id, attempts, last_error, last_at) VALUES (?, 1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error, "
                "last_at = excluded.last_at",
                (entry_id, error, time.time()),
            )
            row = conn.execute("SELECT attempts FROM attempts WHERE id = ?", (entry_id,)).fetchone()
        return int(row[0])

    def quarantine(self, entry_id: int, error: str) -> None:
        """Move an entry that keeps failing to the ``quarantine`` table, with its failure count and last error."""
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO quarantine (id, created_at, quarantined_at, n, batch, attempts, error) "
                "SELECT s.id, s.created_at, ?, s.n, s.batch, COALESCE(a.attempts, 0), ? "
                "FROM spool s LEFT JOIN attempts a ON a.id = s.id WHERE s.id = ?",
                (time.time(), error, entry_id),
            )
            conn.execute("DELETE FROM spool WHERE id = ?", (entry_id,))
            conn.execute("DELETE FROM attempts WHERE id = ?", (entry_id,))

    def quarantined(self, limit: int = 100) -> list[QuarantinedEntry]:
        """The oldest ``limit`` quarantined entries, oldest first (a read: nothing moves)."""
        rows = self._connection().execute(
            "SELECT id, created_at, quarantined_at, n, attempts, error, batch FROM quarantine ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        out: list[QuarantinedEntry] = []
        for r in rows:
            streams = tuple(dict.fromkeys(str(e.get("stream_id", "")) for e in json.loads(r[6])))
            out.append(QuarantinedEntry(int(r[0]), float(r[1]), float(r[2]), int(r[3]), int(r[4]), str(r[5]),
                                        streams))
        return out

    def retry(self, entry_ids: list[int] | None = None) -> list[int]:
        """Put quarantined entries (all when ``entry_ids`` is None) back in the spool, at their original place.

        An entry keeps its id, so it is written before every entry spooled after
        it, with a fresh count of attempts. Returns the ids moved back (ids not
        in the quarantine are ignored).
        """
        with self._conn() as conn:
            if entry_ids is None:
                ids = [int(r[0]) for r in conn.execute("SELECT id FROM quarantine ORDER BY id").fetchall()]
            else:
                wanted = sorted({int(i) for i in entry_ids})
                ids = [i for i in wanted if conn.execute("SELECT 1 FROM quarantine WHERE id = ?", (i,)).fetchone()]
            for entry_id in ids:
                conn.execute(
                    "INSERT INTO spool (id, created_at, n, batch) SELECT id, created_at, n, batch FROM quarantine "
                    "WHERE id = ?",
                    (entry_id,),
                )
                conn.execute("DELETE FROM quarantine WHERE id = ?", (entry_id,))
        return ids

    def quarantine_error(self, entry_id: int) -> str | None:
        """The last error of a quarantined entry, or ``None`` when it is not in the quarantine."""
        row = self._connection().execute("SELECT error FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else str(row[0])

    def quarantine_count(self) -> int:
        """Number of entries in the quarantine."""
        row = self._connection().execute("SELECT COUNT(*) FROM quarantine").fetchone()
        return int(row[0])

    def bury(self, entry_id: int, error: str) -> None:
        """Move an entry that can never be written to the ``dead`` table, with the reason."""
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO dead (id, created_at, failed_at, n, batch, error) "
                "SELECT id, created_at, ?, n, batch, ? FROM spool WHERE id = ?",
                (time.time(), error, entry_id),
            )
            conn.execute("DELETE FROM spool WHERE id = ?", (entry_id,))
            conn.execute("DELETE FROM attempts WHERE id = ?", (entry_id,))

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
