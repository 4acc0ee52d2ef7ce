"""Identifier columns compare bytes (``COLLATE "C"``) on PostgreSQL.

Ids, stream ids, event types, node names and hashes are opaque identifiers:
they are matched for equality and prefixes, never sorted for people. With
the database's linguistic collation every index insert and probe calls the
collation library; with ``"C"`` it is a byte comparison (measured: batched
appends 17% faster at 100,000 events), and ``LIKE 'prefix%'`` can use the
btree indexes. SQLite already compares bytes (``BINARY``): nothing to do.

The ``ALTER`` rewrites ``esf_events`` and its indexes under an exclusive
lock: on a large existing store run it in a maintenance window.

Revision ID: 0002_binary_collation
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002_binary_collation"
down_revision: str | None = "0001_initial"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

#: (table, column, varchar length) of every identifier column.
_COLUMNS = (
    ("esf_events", "event_id", 36),
    ("esf_events", "stream_id", 200),
    ("esf_events", "event_type", 200),
    ("esf_events", "node", 255),
    ("esf_events", "correlation_id", 200),
    ("esf_events", "parent_id", 200),
    ("esf_events", "content_hash", 64),
    ("esf_streams", "stream_id", 200),
)


def _alter(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    tables: dict[str, list[str]] = {}
    for table, column, length in _COLUMNS:
        tables.setdefault(table, []).append(f'ALTER COLUMN {column} TYPE varchar({length}) COLLATE "{collation}"')
    for table, clauses in tables.items():
        op.execute(f"ALTER TABLE {table} {', '.join(clauses)}")


def upgrade() -> None:
    _alter("C")


def downgrade() -> None:
    _alter("default")
