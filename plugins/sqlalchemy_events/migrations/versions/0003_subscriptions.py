"""Subscriptions: their state, their batches, and a wake-up on every append (PostgreSQL).

``esf_subscriptions`` holds one row per subscription: the read cursor (the
highest position the dispatcher has read and assigned to batches), whether
it is paused, and a description of its filter. ``esf_subscription_batches``
holds the batches read but not yet handled (``queued``, ``sent``) and those
whose handler was dead-lettered (``dead``). The checkpoint itself stays in
``esf_checkpoints``.

On PostgreSQL a trigger on ``esf_event_head`` (updated once by every append
transaction) sends ``NOTIFY esf_events``, delivered when the append commits,
and triggers on ``esf_subscription_batches`` send ``NOTIFY esf_subscriptions``
when a batch is handled or dead-lettered (its partition is free again).

Revision ID: 0003_subscriptions
Revises: 0002_binary_collation
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003_subscriptions"
down_revision: str | None = "0002_binary_collation"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_PK_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION esf_notify_events() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('esf_events', NEW.position::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER esf_event_head_notify AFTER INSERT OR UPDATE ON esf_event_head
FOR EACH ROW EXECUTE FUNCTION esf_notify_events()
"""
# A batch handled (deleted) or dead-lettered frees its partition: wake the dispatchers.
_BATCH_FUNCTION = """
CREATE OR REPLACE FUNCTION esf_notify_subscriptions() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('esf_subscriptions', OLD.name);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
_BATCH_TRIGGERS = (
    """CREATE TRIGGER esf_subscription_batch_done AFTER DELETE ON esf_subscription_batches
    FOR EACH ROW EXECUTE FUNCTION esf_notify_subscriptions()""",
    """CREATE TRIGGER esf_subscription_batch_dead AFTER UPDATE ON esf_subscription_batches
    FOR EACH ROW WHEN (NEW.state = 'dead' AND OLD.state <> 'dead') EXECUTE FUNCTION esf_notify_subscriptions()""",
)


def upgrade() -> None:
    op.create_table(
        "esf_subscriptions",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("stopped_reason", sa.String(2000), nullable=True),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "esf_subscription_batches",
        sa.Column("id", _PK_BIGINT, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("partition_keys", _JSON, nullable=False),
        sa.Column("first_position", sa.BigInteger, nullable=False),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        sa.Column("positions", _JSON, nullable=False),
        sa.Column("correlation_id", sa.String(200), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("failed_position", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_esf_subscription_batches_state", "esf_subscription_batches", ["name", "state", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)
        op.execute(_BATCH_FUNCTION)
        for trigger in _BATCH_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS esf_event_head_notify ON esf_event_head")
        op.execute("DROP FUNCTION IF EXISTS esf_notify_events()")
        op.execute("DROP TRIGGER IF EXISTS esf_subscription_batch_done ON esf_subscription_batches")
        op.execute("DROP TRIGGER IF EXISTS esf_subscription_batch_dead ON esf_subscription_batches")
        op.execute("DROP FUNCTION IF EXISTS esf_notify_subscriptions()")
    op.drop_table("esf_subscription_batches")
    op.drop_table("esf_subscriptions")
