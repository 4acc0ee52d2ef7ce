"""The append transaction on SQLite: lock the head row, check ids and versions, insert.

Statements are sent as text on the driver: SQLAlchemy Core's statement building,
cache-key and result set-up took about two thirds of a small batch's append.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from esf.events._model import StoredEvent
from esf.events._validation import PreparedEvent

from ._append_rows import check_expected, chunks, existing_events, stored_event

__all__ = ["SQLITE_ROWS_PER_STATEMENT", "append_sqlite"]

_SQLITE_TOUCH_HEAD = "UPDATE esf_event_head SET position = position WHERE id = 1"
_SQLITE_HEAD = "SELECT position FROM esf_event_head WHERE id = 1"
_SQLITE_SET_HEAD = "UPDATE esf_event_head SET position = ? WHERE id = 1"

_SQLITE_INSERT = (
    "INSERT INTO esf_events (position, event_id, stream_id, stream_version, event_type, recorded_at, monotonic_ns, "
    "node, pid, correlation_id, parent_id, data, metadata, content_hash) VALUES "
)
_SQLITE_UPSERT = "INSERT INTO esf_streams (stream_id, version) VALUES "
_SQLITE_UPSERT_TAIL = " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version"
#: Rows per multi-row INSERT on SQLite at most (and below the connection's variable limit).
SQLITE_ROWS_PER_STATEMENT = 500

# Python's sqlite3 releases the GIL around every step of a statement, and a thread that
# released it waits for the running thread's switch interval to get it back. A job
# history writer next to a busy job thread got one row through per switch with
# executemany (one step per row); a multi-row INSERT is one step for many rows, and the
# stream versions come back as one JSON row instead of one row per stream.


def append_sqlite(
    conn: Connection,
    prepared: Sequence[PreparedEvent],
    expected_version: int | None,
    node: str,
) -> tuple[list[StoredEvent], frozenset[str]]:
    """:func:`._append.append_in` on SQLite."""
    if not conn.get_execution_options().get("esf_write"):
        # In a caller's deferred SQLite transaction, write first so that the
        # write lock is taken before anything is read (a read-then-write
        # upgrade fails with SQLITE_BUSY when another writer committed).
        conn.exec_driver_sql(_SQLITE_TOUCH_HEAD)
    head = int(conn.exec_driver_sql(_SQLITE_HEAD).scalar_one())
    unique, stored = existing_events(conn, prepared)
    already = frozenset(stored)
    new = [p for eid, p in unique.items() if eid not in stored]
    if new:
        stream_ids = list(dict.fromkeys(p.stream_id for p in new))
        versions: dict[str, int] = {}
        for chunk in chunks(stream_ids):
            versions.update(_sqlite_versions(conn, chunk))
        check_expected(new, versions, expected_version)
        rows: list[Any] = []
        position = head
        at: datetime | None = None
        at_text = ""
        for p in new:
            position += 1
            version = versions.get(p.stream_id, 0) + 1
            versions[p.stream_id] = version
            if p.recorded_at is not at:  # the events of one batch share their time
                at = p.recorded_at
                at_text = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            # Pre-encoded JSON and SQLAlchemy's SQLite DATETIME text format: one
            # driver-level statement instead of Core's per-row type processing.
            rows.append(
                (
                    position,
                    p.event_id,
                    p.stream_id,
                    version,
                    p.event_type,
                    at_text,
                    p.monotonic_ns,
                    node,
                    p.pid,
                    p.correlation_id,
                    p.parent_id,
                    p.data_json or json.dumps(p.data),
                    p.metadata_json or json.dumps(p.metadata),
                    p.content_hash,
                )
            )
            stored[p.event_id] = stored_event(p, position, version, node)
        _sqlite_insert_many(conn, _SQLITE_INSERT, "", rows)
        _sqlite_insert_many(conn, _SQLITE_UPSERT, _SQLITE_UPSERT_TAIL, [(s, versions[s]) for s in stream_ids])
        conn.exec_driver_sql(_SQLITE_SET_HEAD, (position,))
    return [stored[p.event_id] for p in prepared], already


def _sqlite_insert_many(conn: Connection, head: str, tail: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` + ``(?, …), (?, …)…`` + ``tail`` over ``rows``, as few statements as the variable limit allows."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(SQLITE_ROWS_PER_STATEMENT, _sqlite_variable_limit(conn) // width))
    one = "(" + ", ".join("?" * width) + ")"
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        params = [value for row in chunk for value in row]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)) + tail, tuple(params))


def _sqlite_versions(conn: Connection, stream_ids: Sequence[str]) -> dict[str, int]:
    """Stored versions of ``stream_ids`` (those that exist), in one result row."""
    marks = ", ".join("?" * len(stream_ids))
    text = conn.exec_driver_sql(
        f"SELECT json_group_array(json_array(stream_id, version)) FROM esf_streams WHERE stream_id IN ({marks})",
        tuple(stream_ids),
    ).scalar_one()
    return {str(sid): int(version) for sid, version in json.loads(text or "[]")}


_variable_limit: int | None = None


def _sqlite_variable_limit(conn: Connection) -> int:
    """SQLite's limit on bound variables per statement (999 before 3.32, 32,766 after; builds vary)."""
    global _variable_limit
    if _variable_limit is None:
        import sqlite3

        try:
            raw = conn.connection.dbapi_connection
            _variable_limit = int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))  # type: ignore[union-attr]
        except Exception:
            _variable_limit = 999  # the smallest limit any SQLite has had
    return _variable_limit
