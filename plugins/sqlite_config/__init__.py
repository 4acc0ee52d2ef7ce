"""SQLite configuration store: the embedded default (one file under ``data_dir``)."""

from __future__ import annotations

from ._store import SqliteConfigStore

__all__ = ["SqliteConfigStore"]
