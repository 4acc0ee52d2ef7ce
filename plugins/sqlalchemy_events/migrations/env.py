"""Alembic environment: runs on the connection that ``upgrade()`` passes in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from esf.plugins.sqlalchemy_events._schema import metadata

VERSION_TABLE = "esf_alembic_version"


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run these migrations with esf.plugins.sqlalchemy_events.migrations.upgrade(url) or `esf db upgrade`"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_run()
