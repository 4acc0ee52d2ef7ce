"""Switching a SQLite file to WAL while another connection holds its lock (esf._sqlite.enable_wal)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from esf._sqlite import enable_wal


def _locked(path: Path) -> sqlite3.Connection:
    """A connection holding the file's exclusive lock (as a process creating its schema does)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    return holder


def test_the_switch_waits_for_the_lock_instead_of_failing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    holder = _locked(path)
    # a connection without a busy handler fails at once while the lock is held
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("PRAGMA journal_mode=WAL")
    releaser = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    releaser.start()
    try:
        enable_wal(other, timeout_s=30)
    finally:
        releaser.join()
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_the_switch_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    holder = _locked(path)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            enable_wal(other, timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
