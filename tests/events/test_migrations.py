"""Migrations: one programmatic upgrade, idempotent, safe from concurrent processes."""

from __future__ import annotations

import multiprocessing as mp

import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import upgrade
from esf.plugins.sqlalchemy_events._engine import make_engine
from esf.plugins.sqlalchemy_events.migrations import current_revision, head_revision

TABLES = {"esf_events", "esf_event_head", "esf_streams", "esf_outbox", "esf_ledger", "esf_checkpoints"}


def test_upgrade_creates_every_table_and_is_idempotent(db_url):
    # When the database is upgraded twice
    assert upgrade(db_url) == head_revision()
    assert upgrade(db_url) == head_revision()
    # Then every table exists, with one head row, and the revision is recorded in ESF's own version table
    engine = make_engine(db_url)
    try:
        names = set(sa.inspect(engine).get_table_names())
        assert names >= TABLES | {"esf_alembic_version"}
        assert "alembic_version" not in names
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, position FROM esf_event_head")).all() == [(1, 0)]
        assert current_revision(engine) == head_revision()
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("esf_events")}
        assert {"ix_esf_events_type", "ix_esf_events_recorded_at", "ix_esf_events_correlation"} <= indexes
    finally:
        engine.dispose()


def _migrated_rows(url: str, sql: str) -> list:
    """The rows of ``sql`` on the database at ``url`` once it is migrated."""
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def test_postgresql_gets_a_gin_index_on_data_with_jsonb_path_ops(pg_url):
    [(ddl,)] = _migrated_rows(pg_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_esf_events_data_gin'")
    assert "gin" in ddl.lower() and "jsonb_path_ops" in ddl


def test_postgresql_identifier_columns_compare_bytes(pg_url):
    # Given a migrated PostgreSQL database
    rows = _migrated_rows(
        pg_url,
        "SELECT table_name, column_name, collation_name FROM information_schema.columns "
        "WHERE table_name IN ('esf_events', 'esf_streams') AND data_type = 'character varying'",
    )
    # Then every identifier column uses the "C" collation (byte comparison, as on SQLite)
    collations = {(t, c): coll for t, c, coll in rows}
    assert collations[("esf_events", "event_id")] == "C"
    assert collations[("esf_streams", "stream_id")] == "C"
    assert set(collations.values()) == {"C"}


def _upgrade_in_child(url: str) -> None:
    upgrade(url)


def test_concurrent_upgrades_from_several_processes_all_succeed(db_url):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_upgrade_in_child, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM esf_event_head")).scalar_one() == 1
    finally:
        engine.dispose()
