"""Initial event store tables: events, head, streams, outbox, ledger, checkpoints.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_initial"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

# Frozen copies of the column types (a migration must not change when _schema.py does).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_PK_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "esf_events",
        sa.Column("position", _PK_BIGINT, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("monotonic_ns", sa.BigInteger, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("correlation_id", sa.String(200), nullable=True),
        sa.Column("parent_id", sa.String(200), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_esf_events_event_id"),
        sa.UniqueConstraint("stream_id", "stream_version", name="uq_esf_events_stream_version"),
    )
    op.create_index("ix_esf_events_type", "esf_events", ["event_type"])
    op.create_index("ix_esf_events_recorded_at", "esf_events", ["recorded_at"])
    op.create_index("ix_esf_events_correlation", "esf_events", ["correlation_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_esf_events_data_gin",
            "esf_events",
            ["data"],
            postgresql_using="gin",
            postgresql_ops={"data": "jsonb_path_ops"},
        )

    head = op.create_table(
        "esf_event_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "position": 0}])

    op.create_table(
        "esf_streams",
        sa.Column("stream_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "esf_outbox",
        sa.Column("id", _PK_BIGINT, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
    )
    op.create_table(
        "esf_ledger",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(200), nullable=True),
    )
    op.create_table(
        "esf_checkpoints",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("esf_checkpoints", "esf_ledger", "esf_outbox", "esf_streams", "esf_event_head"):
        op.drop_table(table)
    op.drop_table("esf_events")
