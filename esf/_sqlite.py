"""One SQLite file shared by the processes of an embedded deployment."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ServiceUnavailable
from .lifecycle import track_fork

#: How long a writer waits for another process's write lock, in milliseconds.
BUSY_TIMEOUT_MS = 30_000


def enable_wal(conn: Any, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """``PRAGMA journal_mode=WAL`` on ``conn`` (a connection or cursor), retried while another one holds
    the lock it needs, for at most ``timeout_s``.

    Processes opening one new file at once switch it to WAL together, and SQLite fails one of them at
    once with "database is locked" rather than call its busy handler (that wait could deadlock).

    Raises:
        sqlite3.OperationalError: the lock was not free within ``timeout_s``, or another error.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class _ForkGuard:
    """Held around every SQLite transaction ESF runs in a background thread; ``fork()`` waits for it.

    SQLite keeps per-process lock bookkeeping: a process forked while one of its
    threads is inside a write transaction gives the child a copy that believes
    the lock is still held, and every write in the child then fails with
    "database is locked". A Celery worker's main process forks pool processes at
    any moment (a hard time limit replaces a killed one), so ESF's writers hold
    this guard for the length of a transaction and fork waits until it is free.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


#: The process-wide guard (see :class:`_ForkGuard`).
fork_guard = _ForkGuard()


class SqliteFile:
    """A connection per thread and per process (a forked child opens its own: :meth:`after_fork`), WAL mode,
    busy timeout.

    Parameters:
        path: the database file (its folder is created).
        what: how errors name this store ("the schedule store").
    """

    def __init__(self, path: Path, what: str) -> None:
        self._path = path
        self._what = what
        path.parent.mkdir(parents=True, exist_ok=True)
        #: This process's connection of each thread (``db``).
        self._local = threading.local()
        #: What a forked child inherited: kept, never used nor closed (see after_fork).
        self._inherited: list[threading.local] = []
        track_fork(self)

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): every thread's connection is the parent's.

        A new ``threading.local`` drops them for every thread at once; the old one is kept referenced,
        because closing a connection the parent opened would act on the parent's locks (no I/O at the fork).
        """
        self._inherited.append(self._local)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            enable_wal(db)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction; ``write`` takes the write lock up front (``BEGIN IMMEDIATE``)."""
        with fork_guard:
            try:
                db = self._db()
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise ServiceUnavailable(f"{self._what} {self._path} failed: {exc}") from exc
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
