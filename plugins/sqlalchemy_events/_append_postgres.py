"""The append transaction on PostgreSQL: lock the head row, check ids and versions, insert.

With psycopg (the engine's driver) the statements go to the driver directly
(:func:`append_pg`); a caller's session on another driver takes the portable
SQLAlchemy Core path (:func:`append_pg_core`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from esf.events._model import StoredEvent
from esf.events._validation import PreparedEvent

from ._append_rows import check_expected, chunks, duplicate, existing_events, stored_event
from ._schema import event_head, events, streams

__all__ = ["append_pg", "append_pg_core"]


def append_pg_core(
    conn: Connection,
    prepared: Sequence[PreparedEvent],
    expected_version: int | None,
    node: str,
) -> tuple[list[StoredEvent], frozenset[str]]:
    """:func:`._append.append_in` through SQLAlchemy Core (a PostgreSQL driver other than psycopg)."""
    head = int(conn.execute(sa.select(event_head.c.position).where(event_head.c.id == 1).with_for_update())
               .scalar_one())
    unique, stored = existing_events(conn, prepared)
    already = frozenset(stored)
    new = [p for eid, p in unique.items() if eid not in stored]
    if new:
        stream_ids = list(dict.fromkeys(p.stream_id for p in new))
        versions: dict[str, int] = {}
        for chunk in chunks(stream_ids):
            stmt = sa.select(streams.c.stream_id, streams.c.version).where(streams.c.stream_id.in_(chunk))
            versions.update({r.stream_id: int(r.version) for r in conn.execute(stmt)})
        check_expected(new, versions, expected_version)
        rows: list[dict[str, Any]] = []
        position = head
        for p in new:
            position += 1
            version = versions.get(p.stream_id, 0) + 1
            versions[p.stream_id] = version
            event = stored_event(p, position, version, node)
            rows.append({**vars(event), "content_hash": p.content_hash})  # the stored event's fields plus the hash
            stored[p.event_id] = event
        conn.execute(sa.insert(events), rows)
        _upsert_versions(conn, {s: versions[s] for s in stream_ids})
        conn.execute(sa.update(event_head).where(event_head.c.id == 1).values(position=position))
    return [stored[p.event_id] for p in prepared], already


def _upsert_versions(conn: Connection, versions: Mapping[str, int]) -> None:
    values = [{"stream_id": s, "version": v} for s, v in versions.items()]
    pg = postgresql.insert(streams)
    conn.execute(
        pg.on_conflict_do_update(index_elements=[streams.c.stream_id], set_={"version": pg.excluded.version}),
        values,
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


def append_pg(
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
                raise duplicate(p, int(row[0]), row[4])
            stored[p.event_id] = _tuple_to_event(row)
        already = frozenset(stored)
        new = candidates
        if already:
            new = [p for p in candidates if p.event_id not in already]
            cols = _pg_columns(new)
        if new:
            check_expected(new, versions, expected_version)
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
                    stored[p.event_id] = stored_event(p, position, version, node)
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
        stored[p.event_id] = stored_event(p, position, version, node)
    return stored
