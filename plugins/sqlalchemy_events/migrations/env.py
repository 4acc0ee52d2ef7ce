"""Alembic environment: runs on the connection that ``upgrade()`` passes in ``config.attributes``."""

from __future__ import annotations

from typing import Any

from alembic import context
from esf.plugins.sqlalchemy_events._schema import metadata

VERSION_TABLE = "esf_alembic_version"


def _run(config: Any) -> None:
    connection = config.attributes.get("connection")
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


# Alembic executes this file with its context established; a plain import (a
# packaging test importing every module) finds no context and does nothing.
_config = getattr(context, "config", None)
if _config is not None:
    _run(_config)
