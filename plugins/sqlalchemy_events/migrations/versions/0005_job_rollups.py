"""Job rollups: one row per job, queue and minute of run-time figures, and the rollup's watermark.

``esf_job_rollups`` holds, per minute (Unix seconds of its start), job and queue, the
number of finished runs, the failures, the sum and maximum of the run times, the exact
p50/p95/p99 of the minute, and the run times' counts in fixed exponential buckets
(``exp:8``) so that a window of many minutes merges them. ``esf_job_rollup_state`` holds
the last minute rolled up (``jobs``: the watermark ``esf.telemetry.rollup`` resumes from) and the
event-store position up to which it looked for events stored late (``jobs.scanned_position``).

Revision ID: 0005_job_rollups
Revises: 0004_sagas
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005_job_rollups"
down_revision: str | None = "0004_sagas"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "esf_job_rollups",
        sa.Column("minute", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("queue", sa.String(200), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("runtime_sum_s", sa.Float, nullable=False),
        sa.Column("runtime_max_s", sa.Float, nullable=True),
        sa.Column("p50_s", sa.Float, nullable=True),
        sa.Column("p95_s", sa.Float, nullable=True),
        sa.Column("p99_s", sa.Float, nullable=True),
        sa.Column("buckets", _JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "esf_job_rollup_state",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("minute", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("esf_job_rollup_state")
    op.drop_table("esf_job_rollups")
