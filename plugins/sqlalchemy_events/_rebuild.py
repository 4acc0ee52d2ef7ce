"""Projection rebuilds: replay into shadow copies of the read model's tables, then swap them in.

A rebuild of projection ``P`` owning tables ``T1 … Tn``:

1. creates ``Ti__esf_rebuild`` with the structure of ``Ti`` (PostgreSQL: ``LIKE … INCLUDING ALL``;
   SQLite: the table's and its indexes' stored ``CREATE`` statements, renamed), empty;
2. replays the matching events from position zero in chunks; each chunk's writes and the
   rebuild's own checkpoint (``esf_checkpoints`` row ``rebuild:P``) commit together, so an
   interrupted rebuild resumes where it stopped and applies no event twice. The handler's
   statements name the live tables; on the rebuild's connection they are rewritten to name
   the shadow tables (whole identifiers, quoted or not);
3. when a chunk reaches the head, swaps in one transaction: holds the projection's
   subscription row (its dispatcher waits), forgets its batches queued, sent or dead (a
   handler job still running finishes first; later ones find their batch gone), applies the
   events appended since the last chunk, drops each live table and renames its shadow
   in its place, and sets the projection's cursor and checkpoint to that head.

The live tables are never written by the rebuild: they serve reads (and the live
projection keeps writing them) until the swap commits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection

from esf.events._model import StoredEvent
from esf.events._query import Filter

from ._query_sql import event_columns, row_to_event
from ._read_timeout import long_calls
from ._schema import checkpoints, event_head, events, subscription_batches, subscriptions

__all__ = ["REBUILD_PREFIX", "SHADOW_SUFFIX", "Rebuilder"]

#: The rebuild's checkpoint is stored as ``rebuild:<projection>`` (no subscription name has a colon).
REBUILD_PREFIX = "rebuild:"
#: A table's shadow copy is named ``<table>__esf_rebuild``.
SHADOW_SUFFIX = "__esf_rebuild"

#: ``apply(connection, events)``: run the projection's handler on ``events`` through ``connection``.
Apply = Callable[[Connection, list[StoredEvent]], None]


def shadow_name(name: str) -> str:
    """The shadow of a table or index name (an index already named as a shadow gets its plain name back)."""
    return name[: -len(SHADOW_SUFFIX)] if name.endswith(SHADOW_SUFFIX) else name + SHADOW_SUFFIX


def renamer(mapping: dict[str, str]) -> Callable[[str], str]:
    """A function replacing each whole identifier of ``mapping`` (quoted or not) in SQL text."""
    names = "|".join(re.escape(n) for n in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(r'(?<![\w.$"])("?)(' + names + r')\1(?![\w$])')
    return lambda sql: pattern.sub(lambda m: m.group(1) + mapping[m.group(2)] + m.group(1), sql)


def _now() -> datetime:
    return datetime.now(UTC)


class Rebuilder:
    """The database side of one projection's rebuild (see the module docstring).

    Parameters:
        backend: the subscription backend (its engine, dialect, filter compiler and checkpoint writer).
        name: the projection.
        tables: the live tables its handler writes.
    """

    def __init__(self, backend: Any, name: str, tables: Sequence[str]) -> None:
        self.backend = backend
        self.engine = backend.engine
        self.dialect: str = backend.dialect
        self.name = name
        self.tables = list(tables)
        self.key = REBUILD_PREFIX + name
        self._rename = renamer({t: shadow_name(t) for t in self.tables})

    # -- state ------------------------------------------------------------------------

    def position(self, conn: Connection | None = None) -> int | None:
        """The position the rebuild has replayed up to, or None when no rebuild is under way."""
        if conn is None:
            with self.engine.connect() as own:
                return self.position(own)
        value = conn.execute(sa.select(checkpoints.c.position).where(checkpoints.c.name == self.key)).scalar()
        return None if value is None else int(value)

    def prepare(self, *, restart: bool) -> int:
        """Create the empty shadow tables, or keep those of an interrupted rebuild (unless ``restart``).

        Returns:
            The position replayed so far (0 for a new rebuild).
        """
        from ._engine import connect_write

        with connect_write(self.engine) as conn, long_calls(conn):
            position = self.position(conn)
            existing = set(sa.inspect(conn).get_table_names())
            missing = [t for t in self.tables if t not in existing]
            if missing:
                from esf.errors import ValidationError

                raise ValidationError(f"projection {self.name!r}: table(s) {', '.join(missing)} do not exist "
                                      "(a rebuild copies the structure of the live tables)", field="tables")
            if position is not None and not restart and all(shadow_name(t) in existing for t in self.tables):
                return position
            for table in self.tables:
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{shadow_name(table)}"')
                self._create_shadow(conn, table)
            conn.execute(sa.delete(checkpoints).where(checkpoints.c.name == self.key))
            conn.execute(sa.insert(checkpoints).values(name=self.key, position=0, updated_at=_now()))
        return 0

    def _create_shadow(self, conn: Connection, table: str) -> None:
        shadow = shadow_name(table)
        if self.dialect == "postgresql":
            conn.exec_driver_sql(f'CREATE TABLE "{shadow}" (LIKE "{table}" INCLUDING ALL)')
            return
        rows = conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
            "ORDER BY type = 'index'", (table,)).all()
        for kind, name, sql in rows:
            mapping = {table: shadow}
            if kind == "index":
                mapping[name] = shadow_name(name)
            conn.exec_driver_sql(renamer(mapping)(sql))

    def head(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(event_head.c.position)).scalar_one())

    # -- replay -----------------------------------------------------------------------

    @contextmanager
    def _shadowed(self, conn: Connection) -> Iterator[Connection]:
        """``conn``, its statements naming the shadow tables instead of the live ones, while the block runs."""
        def rewrite(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                    _many: bool) -> tuple[str, Any]:
            return self._rename(statement), parameters

        sa_event.listen(conn, "before_cursor_execute", rewrite, retval=True)
        try:
            yield conn
        finally:
            sa_event.remove(conn, "before_cursor_execute", rewrite)

    def _replay(self, conn: Connection, after: int, head: int, filter: Filter | None, limit: int | None,
                apply: Apply) -> tuple[int, int]:
        """Apply the matching events in ``(after, head]`` (at most ``limit``); returns (applied, new position)."""
        stmt = (sa.select(*event_columns()).where(events.c.position > after, events.c.position <= head,
                                                  self.backend._where(filter))
                .order_by(events.c.position))
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = [row_to_event(r) for r in conn.execute(stmt)]
        reached = head if limit is None or len(rows) < limit else rows[-1].position
        if rows:
            with self._shadowed(conn) as shadowed:
                apply(shadowed, rows)
        conn.execute(sa.update(checkpoints).where(checkpoints.c.name == self.key)
                     .values(position=reached, updated_at=_now()))
        return len(rows), reached

    def step(self, after: int, filter: Filter | None, limit: int, apply: Apply) -> tuple[int, int, int]:
        """One chunk: up to ``limit`` matching events after ``after`` and at or below the head, one transaction.

        Returns:
            ``(applied, position reached, head)``.
        """
        from ._engine import connect_write

        with connect_write(self.engine) as conn, long_calls(conn):
            head = int(conn.execute(sa.select(event_head.c.position)).scalar_one())
            applied, reached = self._replay(conn, after, head, filter, limit, apply)
        return applied, reached, head

    def swap(self, after: int, filter: Filter | None, apply: Apply) -> tuple[int, int]:
        """Apply the rest up to the head and swap the shadow tables in, in one transaction.

        Returns:
            ``(events applied in the swap, the head the projection now stands at)``.
        """
        from ._engine import connect_write

        with connect_write(self.engine) as conn, long_calls(conn):
            self.backend._lock(conn, self.name, wait=True)
            conn.execute(sa.delete(subscription_batches).where(subscription_batches.c.name == self.name))
            head = int(conn.execute(sa.select(event_head.c.position)).scalar_one())
            applied, _ = self._replay(conn, after, head, filter, None, apply)
            for table in self.tables:
                conn.exec_driver_sql(f'DROP TABLE "{table}"')
                conn.exec_driver_sql(f'ALTER TABLE "{shadow_name(table)}" RENAME TO "{table}"')
            conn.execute(sa.update(subscriptions).where(subscriptions.c.name == self.name)
                         .values(cursor=head, updated_at=_now()))
            conn.execute(sa.delete(checkpoints).where(checkpoints.c.name.in_([self.name, self.key])))
            self.backend._set_checkpoint(conn, self.name, head)
        return applied, head
