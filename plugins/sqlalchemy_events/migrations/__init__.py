"""Alembic migrations of the event store tables, run programmatically (no ``alembic.ini``).

``upgrade(url)`` brings a database to the newest revision. It is idempotent
and safe when several processes call it at once: on PostgreSQL it holds a
transaction-level advisory lock (:data:`ADVISORY_LOCK_KEY`) around the whole
migration; on SQLite ``BEGIN IMMEDIATE`` serialises the migrators. DDL is
transactional on both, so a failed migration leaves nothing half-done.

The revision table is ``esf_alembic_version``, so an application's own
Alembic history (``alembic_version``) in the same database is untouched.

To add a revision, copy ``versions/0001_initial.py`` to a new file, set
``revision`` and ``down_revision`` (the previous head) and write the
operations by hand; never edit a released revision.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from .._engine import connect_write, make_engine
from .._read_timeout import long_calls

__all__ = ["ADVISORY_LOCK_KEY", "VERSION_TABLE", "current_revision", "head_revision", "upgrade"]

#: Key of the PostgreSQL advisory lock held while migrating (``hash('esf.events.migrate')``, fixed).
ADVISORY_LOCK_KEY = 0x65_73_66_65_76_6D_69_67  # "esfevmig"
#: Alembic's version table for these migrations.
VERSION_TABLE = "esf_alembic_version"

_HERE = Path(__file__).resolve().parent


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(_HERE / "versions"))
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision id shipped with this version of ESF."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` before the first migration)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(url: str | Engine, revision: str = "head") -> str:
    """Migrate the database at ``url`` (or an engine) to ``revision``; returns the revision reached.

    Parameters:
        url: ``postgresql://…`` / ``sqlite:///path`` or an ``Engine`` made by this plugin.
        revision: target revision, ``"head"`` by default.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    engine = make_engine(url, pool_size=1) if isinstance(url, str) else url
    try:
        if revision == "head":
            try:
                if current_revision(engine) == head_revision():
                    return head_revision()
            except sa.exc.ProgrammingError:  # pragma: no cover - version table absent on some dialects
                pass
        cfg = _config()
        # A migration may build an index or wait for a lock as long as it takes: no read timeout,
        # and no statement timeout for its transaction.
        with connect_write(engine) as conn, long_calls(conn, unbounded=True):
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        reached = current_revision(engine)
        return reached or ""
    finally:
        if isinstance(url, str):
            engine.dispose()
