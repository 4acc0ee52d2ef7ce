"""Tables of the SQLAlchemy event store (PostgreSQL and SQLite).

``position`` is assigned inside the appending transaction from the single
row of ``esf_event_head``, which every append locks: positions are gap-free
and commit-ordered, so a reader that has seen position N never later finds
a committed event at or below N that it had not seen.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

#: JSONB on PostgreSQL (GIN-indexed), JSON text on SQLite.
JsonType = JSON().with_variant(JSONB(), "postgresql")


def _ident(length: int) -> String:
    """An identifier column: byte comparison (``COLLATE "C"``) on PostgreSQL, as SQLite does by default."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")  # type: ignore[return-value]


events = Table(
    "esf_events",
    metadata,
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("event_id", _ident(36), nullable=False),
    Column("stream_id", _ident(200), nullable=False),
    Column("stream_version", BigInteger, nullable=False),
    Column("event_type", _ident(200), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("monotonic_ns", BigInteger, nullable=False),
    Column("node", _ident(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("correlation_id", _ident(200), nullable=True),
    Column("parent_id", _ident(200), nullable=True),
    Column("data", JsonType, nullable=False),
    Column("metadata", JsonType, nullable=False),
    #: sha256 of the canonical JSON of the content, to tell a retry from a clash.
    Column("content_hash", _ident(64), nullable=False),
    UniqueConstraint("event_id", name="uq_esf_events_event_id"),
    UniqueConstraint("stream_id", "stream_version", name="uq_esf_events_stream_version"),
    Index("ix_esf_events_type", "event_type"),
    Index("ix_esf_events_recorded_at", "recorded_at"),
    Index("ix_esf_events_correlation", "correlation_id"),
    Index("ix_esf_events_data_gin", "data", postgresql_using="gin", postgresql_ops={"data": "jsonb_path_ops"}),
)

#: One row (id = 1): the last assigned position. Appends lock it.
event_head = Table(
    "esf_event_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
)

#: Last version of each stream (for expected_version checks without a scan).
streams = Table(
    "esf_streams",
    metadata,
    Column("stream_id", _ident(200), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

#: Jobs written in the caller's transaction, dispatched after it commits.
outbox = Table(
    "esf_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(50), nullable=False),
    Column("payload", JsonType, nullable=False),
)

#: Idempotency ledger: keys whose effect has committed.
ledger = Table(
    "esf_ledger",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("job_id", String(200), nullable=True),
)

#: Durable subscription checkpoints.
checkpoints = Table(
    "esf_checkpoints",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: One row per subscription: its read cursor and whether it is paused.
subscriptions = Table(
    "esf_subscriptions",
    metadata,
    Column("name", String(200), primary_key=True),
    #: The highest position read and assigned to batches (events above it are not read yet).
    Column("cursor", BigInteger, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("stopped_reason", String(2000), nullable=True),
    Column("spec", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Batches read and not handled yet (``queued``, ``sent``), or dead-lettered (``dead``).
subscription_batches = Table(
    "esf_subscription_batches",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    #: The partition keys of the batch's events (no two batches in flight share one).
    Column("partition_keys", JsonType, nullable=False),
    Column("first_position", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("positions", JsonType, nullable=False),
    Column("correlation_id", String(200), nullable=True),
    Column("state", String(10), nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("error", String(2000), nullable=True),
    #: The position of the event whose handler failed last.
    Column("failed_position", BigInteger, nullable=True),
    Index("ix_esf_subscription_batches_state", "name", "state", "id"),
)

#: Run-time figures per minute (Unix seconds of its start), job and queue (``esf.telemetry.rollup``).
job_rollups = Table(
    "esf_job_rollups",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("job", String(200), primary_key=True),
    Column("queue", String(200), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("runtime_sum_s", Float, nullable=False),
    Column("runtime_max_s", Float, nullable=True),
    #: Exact percentiles of the minute's run times.
    Column("p50_s", Float, nullable=True),
    Column("p95_s", Float, nullable=True),
    Column("p99_s", Float, nullable=True),
    #: ``{bucket index: count}`` of the run times in ``exp:8`` buckets, merged over many minutes.
    Column("buckets", JsonType, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: The last minute rolled up (``name = 'jobs'``) and the position up to which late events were looked for
#: (``name = 'jobs.scanned_position'``).
job_rollup_state = Table(
    "esf_job_rollup_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("minute", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: One row per saga instance: its status, its state and the bookkeeping of its steps, versioned.
sagas = Table(
    "esf_sagas",
    metadata,
    Column("name", _ident(50), primary_key=True),
    Column("saga_id", _ident(150), primary_key=True),
    #: Bumped by every transition; a write names the version it read (compare-and-set).
    Column("version", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("state", JsonType, nullable=False),
    #: Steps in flight, completed steps with their compensations, timeouts, the failure reason.
    Column("progress", JsonType, nullable=False),
    Column("correlation_id", String(200), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_esf_sagas_status", "name", "status"),
)
