"""The append transaction: lock the head row, check ids and versions, insert.

Everything is checked before the first write, so a refused append
(``DuplicateEventId``, ``ConcurrencyConflict``) leaves the caller's
transaction usable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from esf.errors import ConcurrencyConflict, DuplicateEventId
from esf.events._model import FrozenDict, StoredEvent
from esf.events._validation import PreparedEvent

from ._schema import event_head, events, streams

__all__ = ["append_in", "row_to_event", "select_events"]

#: Bound parameters per ``IN (…)`` list (SQLite caps the number of variables).
IN_CHUNK = 500

_new_object = object.__new__
_set_attribute = object.__setattr__


def select_events() -> sa.Select[Any]:
    """``SELECT`` of every column :func:`row_to_event` reads."""
    return sa.select(
        events.c.position,
        events.c.event_id,
        events.c.stream_id,
        events.c.stream_version,
        events.c.event_type,
        events.c.recorded_at,
        events.c.monotonic_ns,
        events.c.node,
        events.c.pid,
        events.c.correlation_id,
        events.c.parent_id,
        events.c.data,
        events.c.metadata,
        events.c.content_hash,
    )


def row_to_event(row: Any) -> StoredEvent:
    """A :class:`StoredEvent` from a row of :func:`select_events` (``recorded_at`` made UTC-aware)."""
    m: Mapping[str, Any] = row._mapping
    recorded_at: datetime = m["recorded_at"]
    if recorded_at.tzinfo is None:  # SQLite keeps no offset; ESF always writes UTC
        recorded_at = recorded_at.replace(tzinfo=UTC)
    else:
        recorded_at = recorded_at.astimezone(UTC)
    return StoredEvent(
        position=int(m["position"]),
        event_id=m["event_id"],
        stream_id=m["stream_id"],
        stream_version=int(m["stream_version"]),
        event_type=m["event_type"],
        recorded_at=recorded_at,
        monotonic_ns=int(m["monotonic_ns"]),
        node=m["node"],
        pid=int(m["pid"]),
        correlation_id=m["correlation_id"],
        parent_id=m["parent_id"],
        data=m["data"],
        metadata=m["metadata"],
    )


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


def _lock_head(conn: Connection) -> int:
    if conn.dialect.name == "sqlite":
        if not conn.get_execution_options().get("esf_write"):
            # In a caller's deferred SQLite transaction, write first so that the
            # write lock is taken before anything is read (a read-then-write
            # upgrade fails with SQLITE_BUSY when another writer committed).
            conn.exec_driver_sql(_SQLITE_TOUCH_HEAD)
        return int(conn.exec_driver_sql(_SQLITE_HEAD).scalar_one())
    stmt = sa.select(event_head.c.position).where(event_head.c.id == 1).with_for_update()
    return int(conn.execute(stmt).scalar_one())


# SQLite statements as text: SQLAlchemy Core's statement building, cache-key and
# result set-up took about two thirds of a small batch's append.
_SQLITE_TOUCH_HEAD = "UPDATE esf_event_head SET position = position WHERE id = 1"
_SQLITE_HEAD = "SELECT position FROM esf_event_head WHERE id = 1"
_SQLITE_SET_HEAD = "UPDATE esf_event_head SET position = ? WHERE id = 1"


def append_in(
    conn: Connection,
    prepared: Sequence[PreparedEvent],
    expected_version: int | None,
    node: str,
) -> tuple[list[StoredEvent], frozenset[str]]:
    """Append ``prepared`` inside the transaction open on ``conn`` (no commit).

    Returns:
        The stored events, one per input in input order, and the ids that were
        already stored with the same content.

    Raises:
        DuplicateEventId: an id is stored with other content.
        ConcurrencyConflict: ``expected_version`` does not match the stream's version.
    """
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        return _append_pg(conn, prepared, expected_version, node)
    # SQLite, or a caller's session on another PostgreSQL driver: portable SQLAlchemy Core.
    head = _lock_head(conn)
    unique: dict[str, PreparedEvent] = {}
    for p in prepared:
        unique.setdefault(p.event_id, p)
    stored: dict[str, StoredEvent] = {}
    # Ids generated for this append cannot be stored yet: only the caller's own are looked up.
    ids = [eid for eid, p in unique.items() if not p.new_id]
    for chunk in _chunks(ids):
        for row in conn.execute(select_events().where(events.c.event_id.in_(chunk))):
            p = unique[row.event_id]
            if row.content_hash != p.content_hash:
                raise _duplicate(p, int(row.position), row.event_type)
            stored[p.event_id] = row_to_event(row)
    already = frozenset(stored)
    new = [p for eid, p in unique.items() if eid not in stored]
    if new:
        stream_ids = list(dict.fromkeys(p.stream_id for p in new))
        raw_sqlite = conn.dialect.name == "sqlite"
        versions: dict[str, int] = {}
        for chunk in _chunks(stream_ids):
            if raw_sqlite:
                versions.update(_sqlite_versions(conn, chunk))
                continue
            stmt = sa.select(streams.c.stream_id, streams.c.version).where(streams.c.stream_id.in_(chunk))
            versions.update({r.stream_id: int(r.version) for r in conn.execute(stmt)})
        _check_expected(new, versions, expected_version)
        rows: list[Any] = []
        position = head
        at: datetime | None = None
        at_text = ""
        for p in new:
            position += 1
            version = versions.get(p.stream_id, 0) + 1
            versions[p.stream_id] = version
            event = _stored(p, position, version, node)
            if raw_sqlite:
                if p.recorded_at is not at:  # the events of one batch share their time
                    at = p.recorded_at
                    at_text = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                # Pre-encoded JSON and SQLAlchemy's SQLite DATETIME text format: one
                # driver-level executemany instead of Core's per-row type processing.
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
            else:  # Core: the stored event's fields plus the hash
                rows.append({**vars(event), "content_hash": p.content_hash})
            stored[p.event_id] = event
        if raw_sqlite:
            _sqlite_insert_many(conn, _SQLITE_INSERT, "", rows)
            _sqlite_insert_many(conn, _SQLITE_UPSERT, _SQLITE_UPSERT_TAIL, [(s, versions[s]) for s in stream_ids])
            conn.exec_driver_sql(_SQLITE_SET_HEAD, (position,))
        else:
            conn.execute(sa.insert(events), rows)
            _upsert_versions(conn, {s: versions[s] for s in stream_ids})
            conn.execute(sa.update(event_head).where(event_head.c.id == 1).values(position=position))
    return [stored[p.event_id] for p in prepared], already


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


def _upsert_versions(conn: Connection, versions: Mapping[str, int]) -> None:
    values = [{"stream_id": s, "version": v} for s, v in versions.items()]
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(streams)
        conn.execute(
            pg.on_conflict_do_update(index_elements=[streams.c.stream_id], set_={"version": pg.excluded.version}),
            values,
        )
    else:
        lite = sqlite.insert(streams)
        conn.execute(
            lite.on_conflict_do_update(index_elements=[streams.c.stream_id], set_={"version": lite.excluded.version}),
            values,
        )


def _stored(p: PreparedEvent, position: int, version: int, node: str) -> StoredEvent:
    data, metadata = p.data, p.metadata
    if type(data) is FrozenDict and type(metadata) is FrozenDict:
        # Already deep-frozen by validation (its fast path), so __post_init__ would
        # copy nothing: skip the frozen dataclass's per-field __setattr__ too
        # (a third of the append's Python time on large batches).
        event: StoredEvent = _new_object(StoredEvent)
        _set_attribute(
            event,
            "__dict__",
            {
                "position": position,
                "event_id": p.event_id,
                "stream_id": p.stream_id,
                "stream_version": version,
                "event_type": p.event_type,
                "recorded_at": p.recorded_at,
                "monotonic_ns": p.monotonic_ns,
                "node": node,
                "pid": p.pid,
                "correlation_id": p.correlation_id,
                "parent_id": p.parent_id,
                "data": data,
                "metadata": metadata,
            },
        )
        return event
    return StoredEvent(
        position=position,
        event_id=p.event_id,
        stream_id=p.stream_id,
        stream_version=version,
        event_type=p.event_type,
        recorded_at=p.recorded_at,
        monotonic_ns=p.monotonic_ns,
        node=node,
        pid=p.pid,
        correlation_id=p.correlation_id,
        parent_id=p.parent_id,
        data=p.data,
        metadata=p.metadata,
    )


def _check_expected(new: Sequence[PreparedEvent], versions: Mapping[str, int], expected_version: int | None) -> None:
    if expected_version is None:
        return
    stream_id = new[0].stream_id
    actual = versions.get(stream_id, 0)
    if actual != expected_version:
        raise ConcurrencyConflict(
            f"stream {stream_id!r} is at version {actual}, not the expected {expected_version}: "
            "re-read the stream and retry",
            expected=expected_version,
            actual=actual,
            stream_id=stream_id,
        )


def _duplicate(p: PreparedEvent, position: int, event_type: str) -> DuplicateEventId:
    return DuplicateEventId(
        f"event id {p.event_id} is already stored (position {position}, type {event_type}) "
        "with different content; use a new id for a new event",
        event_id=p.event_id,
        position=position,
    )


# PostgreSQL: the same transaction in two pipelined round trips whatever the batch
# size (arrays + unnest instead of one statement per row), on the driver directly,
# with binary parameters (%b: psycopg escapes text arrays slowly). The Python work
# that does not depend on the server's answer is done while the server works: the
# column arrays while it locks and looks up, the returned events while it inserts.
_PG_COLUMNS = (
    "position, event_id, stream_id, stream_version, event_type, recorded_at, monotonic_ns, node, pid, "
    "correlation_id, parent_id, data, metadata, content_hash"
)
_PG_LOCK = "SELECT position FROM esf_event_head WHERE id = 1 FOR UPDATE"
_PG_EXISTING = f"SELECT {_PG_COLUMNS} FROM esf_events WHERE event_id = ANY(%b::varchar[])"
_PG_VERSIONS = "SELECT stream_id, version FROM esf_streams WHERE stream_id = ANY(%b::varchar[])"
# Positions are head + 1, head + 2, … in array order (WITH ORDINALITY); the node is one value.
_PG_INSERT = (
    f"INSERT INTO esf_events ({_PG_COLUMNS}) "
    "SELECT %b::bigint + o, e, s, v, t, r, mn, %b::varchar, pid, c, pa, d::jsonb, m::jsonb, h FROM unnest("
    "%b::varchar[], %b::varchar[], %b::bigint[], %b::varchar[], %b::timestamptz[], %b::bigint[], "
    "%b::int[], %b::varchar[], %b::varchar[], %b::text[], %b::text[], %b::varchar[]"
    ") WITH ORDINALITY AS u(e, s, v, t, r, mn, pid, c, pa, d, m, h, o)"
)
_PG_UPSERT = (
    "INSERT INTO esf_streams (stream_id, version) SELECT * FROM unnest(%b::varchar[], %b::bigint[]) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version"
)
_PG_HEAD = "UPDATE esf_event_head SET position = %b WHERE id = 1"

# The one-round-trip append (no expected_version): assume every id is new, let the
# event_id unique index say otherwise. The server numbers the rows (head + ordinality,
# stream version + rank in the stream) from the rows the same transaction has just
# locked and read; Python computes the same numbers from the same reads.
_PG_SAVEPOINT = "SAVEPOINT esf_append"
_PG_RELEASE = "RELEASE SAVEPOINT esf_append"
_PG_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT esf_append"
_PG_INSERT_NEW = (
    "WITH u AS (SELECT *, row_number() OVER (PARTITION BY s ORDER BY o) AS k FROM unnest("
    "%b::varchar[], %b::varchar[], %b::varchar[], %b::timestamptz[], %b::bigint[], "
    "%b::int[], %b::varchar[], %b::varchar[], %b::text[], %b::text[], %b::varchar[]"
    ") WITH ORDINALITY AS a(e, s, t, r, mn, pid, c, pa, d, m, h, o)), "
    f"ins AS (INSERT INTO esf_events ({_PG_COLUMNS}) "
    "SELECT hd.position + u.o, u.e, u.s, coalesce(st.version, 0) + u.k, u.t, u.r, u.mn, %b::varchar, u.pid, "
    "u.c, u.pa, u.d::jsonb, u.m::jsonb, u.h "
    "FROM u JOIN esf_event_head hd ON hd.id = 1 LEFT JOIN esf_streams st ON st.stream_id = u.s "
    "RETURNING stream_id, stream_version) "
    "INSERT INTO esf_streams (stream_id, version) SELECT stream_id, max(stream_version) FROM ins GROUP BY stream_id "
    "ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version"
)
_PG_HEAD_ADD = "UPDATE esf_event_head SET position = position + %b WHERE id = 1"


def _tuple_to_event(t: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        position=int(t[0]),
        event_id=t[1],
        stream_id=t[2],
        stream_version=int(t[3]),
        event_type=t[4],
        recorded_at=t[5].astimezone(UTC),
        monotonic_ns=int(t[6]),
        node=t[7],
        pid=int(t[8]),
        correlation_id=t[9],
        parent_id=t[10],
        data=t[11],
        metadata=t[12],
    )


def _pg_columns(events: Sequence[PreparedEvent]) -> list[list[Any]]:
    """The per-event arrays of :data:`_PG_INSERT`, except the stream versions (index 2, filled later)."""
    return [
        [p.event_id for p in events],
        [p.stream_id for p in events],
        [],
        [p.event_type for p in events],
        [p.recorded_at for p in events],
        [p.monotonic_ns for p in events],
        [p.pid for p in events],
        [p.correlation_id for p in events],
        [p.parent_id for p in events],
        [p.data_json or json.dumps(p.data) for p in events],
        [p.metadata_json or json.dumps(p.metadata) for p in events],
        [p.content_hash for p in events],
    ]


def _append_pg(
    conn: Connection, prepared: Sequence[PreparedEvent], expected_version: int | None, node: str
) -> tuple[list[StoredEvent], frozenset[str]]:
    import psycopg

    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    unique: dict[str, PreparedEvent] = {}
    for p in prepared:
        unique.setdefault(p.event_id, p)
    candidates = list(unique.values())
    all_streams = list(dict.fromkeys(p.stream_id for p in candidates))
    if expected_version is None:
        stored_new = _append_pg_new(raw, candidates, all_streams, node)
        if stored_new is not None:
            return [stored_new[p.event_id] for p in prepared], frozenset()
    statement = _PG_LOCK
    try:
        # Round trip 1 (pipelined): lock the head, look up the ids and the stream versions.
        with raw.pipeline():
            head_cur = raw.execute(_PG_LOCK)
            existing_cur = raw.execute(_PG_EXISTING, (list(unique),))
            versions_cur = raw.execute(_PG_VERSIONS, (all_streams,))
            # The queries are on their way: build the insert's arrays meanwhile
            # (assuming every event is new, the common case).
            cols = _pg_columns(candidates)
        head_row = head_cur.fetchone()
        assert head_row is not None, "esf_event_head has no row: run the migrations"
        head = int(head_row[0])
        existing = existing_cur.fetchall()
        versions = {r[0]: int(r[1]) for r in versions_cur.fetchall()}
        stored: dict[str, StoredEvent] = {}
        for row in existing:
            p = unique[row[1]]
            if row[13] != p.content_hash:
                raise _duplicate(p, int(row[0]), row[4])
            stored[p.event_id] = _tuple_to_event(row)
        already = frozenset(stored)
        new = candidates
        if already:
            new = [p for p in candidates if p.event_id not in already]
            cols = _pg_columns(new)
        if new:
            _check_expected(new, versions, expected_version)
            stream_versions = cols[2]
            for p in new:
                version = versions.get(p.stream_id, 0) + 1
                versions[p.stream_id] = version
                stream_versions.append(version)
            last = head + len(new)
            new_streams = list(dict.fromkeys(cols[1]))
            statement = _PG_INSERT
            # Round trip 2 (pipelined): insert, bump the stream versions, move the head.
            with raw.pipeline():
                raw.execute(_PG_INSERT, (head, node, *cols))
                raw.execute(_PG_UPSERT, (new_streams, [versions[s] for s in new_streams]))
                raw.execute(_PG_HEAD, (last,))
                # Sent: build the returned events while the server inserts (discarded if it fails).
                for position, p, version in zip(range(head + 1, last + 1), new, stream_versions, strict=True):
                    stored[p.event_id] = _stored(p, position, version, node)
    except psycopg.Error as exc:
        # Same shape as SQLAlchemy's own errors, so callers map them in one place.
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    return [stored[p.event_id] for p in prepared], already


def _append_pg_new(
    raw: Any, candidates: Sequence[PreparedEvent], all_streams: list[str], node: str
) -> dict[str, StoredEvent] | None:
    """The common case in one round trip: every id is new. ``None``: one is not, nothing was written.

    Inside a savepoint: when the ``event_id`` unique index refuses a row, the
    savepoint is rolled back (the head lock with it) and the caller takes the
    two-round-trip path, which looks the ids up first (retries, replays, clashes).
    """
    import psycopg

    cols = _pg_columns(candidates)
    del cols[2]  # the server computes the stream versions
    try:
        try:
            with raw.pipeline():
                raw.execute(_PG_SAVEPOINT)
                head_cur = raw.execute(_PG_LOCK)
                versions_cur = raw.execute(_PG_VERSIONS, (all_streams,))
                raw.execute(_PG_INSERT_NEW, (*cols, node))
                raw.execute(_PG_HEAD_ADD, (len(candidates),))
                raw.execute(_PG_RELEASE)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "uq_esf_events_event_id":
                raise
            raw.execute(_PG_ROLLBACK_TO)
            raw.execute(_PG_RELEASE)
            return None
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError.instance(_PG_INSERT_NEW, None, exc, psycopg.Error) from exc
    head_row = head_cur.fetchone()
    assert head_row is not None, "esf_event_head has no row: run the migrations"
    position = int(head_row[0])
    versions = {r[0]: int(r[1]) for r in versions_cur.fetchall()}
    stored: dict[str, StoredEvent] = {}
    for p in candidates:  # the numbering of _PG_INSERT_NEW: array order, per stream
        position += 1
        version = versions.get(p.stream_id, 0) + 1
        versions[p.stream_id] = version
        stored[p.event_id] = _stored(p, position, version, node)
    return stored
