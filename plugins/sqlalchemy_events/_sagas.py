"""Saga instances in the event store's database: one row each, written by compare-and-set on ``version``.

A transition is one transaction that the saga service opens with
:meth:`SqlSagaBackend.transaction`: the row's new version (written only if
the stored version is still the one read), the transition's event, the jobs
it sends (outbox rows) and the idempotency-ledger key of its cause commit
together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._engine import connect_write
from ._schema import sagas

__all__ = ["SqlSagaBackend"]

_COLUMNS = ("name", "saga_id", "version", "status", "state", "progress", "correlation_id", "started_at",
            "updated_at")


def _row(record: Any) -> dict[str, Any]:
    out = {c: getattr(record, c) for c in _COLUMNS}
    out["state"] = dict(out["state"] or {})
    out["progress"] = dict(out["progress"] or {})
    return out


class SqlSagaBackend:
    """Saga rows in the ``esf_sagas`` table of the event store's engine (PostgreSQL or SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one write transaction (``BEGIN IMMEDIATE`` on SQLite); committed when the block exits."""
        with connect_write(self._engine) as conn:
            session = Session(bind=conn)
            try:
                yield session
                session.flush()
            finally:
                session.close()

    def get(self, name: str, saga_id: str) -> dict[str, Any] | None:
        """The stored row of one instance, or None."""
        with self._engine.connect() as conn:
            found = conn.execute(sa.select(sagas).where(sagas.c.name == name, sagas.c.saga_id == saga_id)).first()
        return _row(found) if found is not None else None

    def write(self, session: Session, row: dict[str, Any], *, expected_version: int) -> bool:
        """Store ``row`` if the instance is still at ``expected_version`` (0: it must not exist yet).

        Returns False, writing nothing, when another transition came first.
        """
        now = datetime.now(UTC)
        values = {c: row[c] for c in ("version", "status", "state", "progress")}
        if expected_version == 0:
            try:
                with session.begin_nested():
                    session.execute(sa.insert(sagas).values(
                        name=row["name"], saga_id=row["saga_id"], correlation_id=row.get("correlation_id"),
                        started_at=now, updated_at=now, **values))
            except IntegrityError:
                return False
            return True
        result = session.execute(
            sa.update(sagas)
            .where(sagas.c.name == row["name"], sagas.c.saga_id == row["saga_id"],
                   sagas.c.version == expected_version)
            .values(updated_at=now, **values))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def list(self, name: str | None = None, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Instances, newest update first, optionally of one saga and one status."""
        query = sa.select(sagas).order_by(sagas.c.updated_at.desc(), sagas.c.saga_id).limit(limit)
        if name is not None:
            query = query.where(sagas.c.name == name)
        if status is not None:
            query = query.where(sagas.c.status == status)
        with self._engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def delete(self, name: str, saga_id: str) -> bool:
        """Forget one instance's row (its stream stays). True when it existed."""
        with connect_write(self._engine) as conn:
            return bool(conn.execute(sa.delete(sagas).where(sagas.c.name == name,
                                                            sagas.c.saga_id == saga_id)).rowcount)
