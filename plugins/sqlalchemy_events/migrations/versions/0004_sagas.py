"""Sagas: one row per saga instance (status, state, progress), versioned for compare-and-set.

Revision ID: 0004_sagas
Revises: 0003_subscriptions
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004_sagas"
down_revision: str | None = "0003_subscriptions"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _ident(length: int) -> sa.String:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")  # type: ignore[return-value]


def upgrade() -> None:
    op.create_table(
        "esf_sagas",
        sa.Column("name", _ident(50), primary_key=True),
        sa.Column("saga_id", _ident(150), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("state", _JSON, nullable=False),
        sa.Column("progress", _JSON, nullable=False),
        sa.Column("correlation_id", sa.String(200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_esf_sagas_status", "esf_sagas", ["name", "status"])


def downgrade() -> None:
    op.drop_index("ix_esf_sagas_status", table_name="esf_sagas")
    op.drop_table("esf_sagas")
