"""Large batches on PostgreSQL: validated and streamed into ``COPY`` one event at a time.

The server inserts the first rows while Python validates, hashes and encodes
the next ones, so a batch costs about the larger of the two instead of their
sum. The guarantees are those of :func:`._append.append_in`: the head row is
locked before the first row is sent and moved at the end, positions and
stream versions are numbered under that lock, and the batch commits or rolls
back as a whole (a validation error half-way aborts the ``COPY``; nothing is
stored). Events whose id is already stored make the ``COPY`` fail on the
``event_id`` index: :class:`IdsExist` tells the caller to roll back and take
the lookup path, which answers retries and clashes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from esf.errors import EsfError
from esf.events._model import Event, StoredEvent
from esf.events._validation import DEFAULT_STREAM_ID, MAX_STREAM_ID_CHARS, PreparedEvent

from ._append_postgres import _PG_COLUMNS, _PG_HEAD, _PG_LOCK, _PG_UPSERT, _PG_VERSIONS
from ._append_rows import stored_event

__all__ = ["COPY_MIN_EVENTS", "IdsExist", "copy_append"]

#: Smallest batch sent through ``COPY`` (smaller ones take one pipelined round trip).
COPY_MIN_EVENTS = 64

#: Rows per chunk handed to the driver (some 16-32 KiB of typical events).
_CHUNK_ROWS = 64
_NULL = "\\N"

_COPY = f"COPY esf_events ({_PG_COLUMNS}) FROM STDIN"
_EVENT_ID_INDEX = "uq_esf_events_event_id"


class IdsExist(Exception):
    """An event of the batch is already stored: roll back and append through the lookup path."""


class _Abandon(Exception):
    """Aborts the ``COPY`` without sending the real error's text to the server log."""


def _text(value: str) -> str:
    """A value for ``COPY``'s text format, which has no control characters (backslashes are doubled)."""
    return value.replace("\\", "\\\\") if "\\" in value else value


def _escaped(value: str) -> str:
    """Any string in ``COPY``'s text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _stream_ids(batch: Sequence[Any]) -> list[str]:
    """The stream ids the batch may touch (unvalidated; validation follows, row by row)."""
    found: dict[str, None] = {}
    for e in batch:
        if isinstance(e, Event):
            sid = DEFAULT_STREAM_ID if e.stream_id is None else e.stream_id
            if type(sid) is str and len(sid) <= MAX_STREAM_ID_CHARS:
                found[sid] = None
    return list(found)


def copy_append(
    raw: Any,
    batch: Sequence[Any],
    source: Iterator[PreparedEvent],
    prepared: list[PreparedEvent],
    node: str,
) -> list[StoredEvent]:
    """Append ``batch`` inside the transaction open on the psycopg connection ``raw`` (no commit).

    Parameters:
        source: the batch's prepared events, produced lazily (``iter_prepared``).
        prepared: receives each prepared event as it is consumed, so that the
            caller can finish the batch (``prepared.extend(source)``) for another path.

    Returns:
        The stored events, one per input, in input order.

    Raises:
        IdsExist: an id is already stored; the transaction must be rolled back.
        EsfError: an event failed validation; the transaction must be rolled back.
        sqlalchemy.exc.DBAPIError: a database error (unreachable, …).
    """
    import psycopg

    statement = _PG_LOCK
    try:
        with raw.pipeline():
            head_cur = raw.execute(_PG_LOCK)
            versions_cur = raw.execute(_PG_VERSIONS, (_stream_ids(batch),))
        head_row = head_cur.fetchone()
        assert head_row is not None, "esf_event_head has no row: run the migrations"
        position = head = int(head_row[0])
        versions: dict[str, int] = {r[0]: int(r[1]) for r in versions_cur.fetchall()}
        touched: dict[str, int] = {}
        stored: dict[str, StoredEvent] = {}
        out: list[StoredEvent] = []
        failure: EsfError | None = None
        statement = _COPY
        # Every row shares the batch's time, node and pid: format them once.
        shared: str | None = None
        lines: list[str] = []
        try:
            with raw.cursor() as cur, cur.copy(_COPY) as copy:
                try:
                    for p in source:
                        prepared.append(p)
                        again = stored.get(p.event_id)
                        if again is not None:  # the same event twice in the batch: stored once
                            out.append(again)
                            continue
                        if shared is None:
                            shared = f"\t{p.recorded_at.isoformat()}\t{p.monotonic_ns}\t{_escaped(node)}\t{p.pid}\t"
                        position += 1
                        version = versions.get(p.stream_id, 0) + 1
                        versions[p.stream_id] = touched[p.stream_id] = version
                        c, pa, d, m = p.correlation_id, p.parent_id, p.data_json, p.metadata_json
                        # Ids, stream ids, types and hashes are validated to need no escaping; the
                        # references and the JSON texts have no control characters, only backslashes.
                        lines.append(
                            f"{position}\t{p.event_id}\t{p.stream_id}\t{version}\t{p.event_type}{shared}"
                            f"{_NULL if c is None else _text(c)}\t{_NULL if pa is None else _text(pa)}\t"
                            f"{_text(d)}\t{_text(m)}\t{p.content_hash}\n"
                        )
                        if len(lines) == _CHUNK_ROWS:
                            copy.write("".join(lines))
                            lines.clear()
                        event = stored_event(p, position, version, node)
                        stored[p.event_id] = event
                        out.append(event)
                    if lines:
                        copy.write("".join(lines))
                except EsfError as exc:
                    failure = exc
                    raise _Abandon from None
        except _Abandon:
            assert failure is not None
            raise failure from None
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _EVENT_ID_INDEX:
                raise IdsExist from None
            raise
        if position > head:
            statement = _PG_UPSERT
            with raw.pipeline():
                raw.execute(_PG_UPSERT, (list(touched), list(touched.values())))
                raw.execute(_PG_HEAD, (position,))
    except psycopg.Error as exc:
        # Same shape as SQLAlchemy's own errors, so callers map them in one place.
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    return out
