"""The append transaction: lock the head row, check ids and versions, insert (one module per dialect).

Everything is checked before the first write, so a refused append
(``DuplicateEventId``, ``ConcurrencyConflict``) leaves the caller's
transaction usable.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from esf.events._model import StoredEvent
from esf.events._validation import PreparedEvent

from ._append_postgres import append_pg, append_pg_core
from ._append_rows import IN_CHUNK, row_to_event, select_events
from ._append_sqlite import append_sqlite

__all__ = ["IN_CHUNK", "append_in", "row_to_event", "select_events"]


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
    if conn.dialect.name == "sqlite":
        return append_sqlite(conn, prepared, expected_version, node)
    if conn.dialect.driver == "psycopg":
        return append_pg(conn, prepared, expected_version, node)
    return append_pg_core(conn, prepared, expected_version, node)
