"""Idempotency ledger: record "this effect is done" in the same transaction as the effect.

Usage, with the caller's session (exactly-once effects on at-least-once delivery)::

    with Session(engine) as s:
        with once(s, f"charge:{order_id}", job_id=ctx.job_id) as first:
            if first:
                s.add(Charge(order_id=order_id, amount=amount))   # the effect
        s.commit()   # commits the effect and the key together

``first`` is True when the key was not recorded: the key is inserted (not
committed: the caller's commit records it with the effect, the caller's
rollback forgets it). It is False when the key is already committed: skip the
effect. A concurrent transaction inserting the same key makes the second one
wait on PostgreSQL's unique index until the first ends; then it gets False if
the first committed and True if it rolled back.

With an ``Engine`` instead of a session, ``once`` opens its own transaction,
commits the key when the block exits normally and rolls it back when it
raises. The effect is then *not* in the same transaction, so a crash between
the effect and the commit repeats the effect on redelivery: prefer a session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from esf.errors import ValidationError

from ._engine import connect_write
from ._schema import ledger

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["MAX_KEY_CHARS", "forget", "once", "recorded"]

#: Longest idempotency key, in characters.
MAX_KEY_CHARS = 400


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS or "\x00" in key:
        raise ValidationError(f"idempotency key: must be a string of 1 to {MAX_KEY_CHARS} characters without NUL")
    return key


def _insert(conn: Connection | Session, key: str, job_id: str | None) -> bool:
    values = {"key": key, "recorded_at": datetime.now(UTC), "job_id": job_id}
    dialect = conn.get_bind().dialect.name if not isinstance(conn, Connection) else conn.dialect.name
    stmt: sa.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(ledger).values(**values).on_conflict_do_nothing(index_elements=[ledger.c.key])
    else:
        stmt = sqlite.insert(ledger).values(**values).on_conflict_do_nothing(index_elements=[ledger.c.key])
    result = conn.execute(stmt.returning(ledger.c.key))
    return result.first() is not None


@contextmanager
def once(target: Engine | Session, key: str, *, job_id: str | None = None) -> Iterator[bool]:
    """Yield True the first time ``key`` is recorded, False when it already is (see the module docstring).

    Parameters:
        target: the caller's ``Session`` (recommended) or an ``Engine``.
        key: the idempotency key, at most :data:`MAX_KEY_CHARS` characters.
        job_id: the job that produced the effect (kept for inspection).

    Raises:
        ValidationError: bad key.
    """
    key = _check_key(key)
    if isinstance(target, Engine):
        with connect_write(target) as conn:
            yield _insert(conn, key, job_id)
        return
    yield _insert(target, key, job_id)


def recorded(engine: Engine, key: str) -> bool:
    """Whether ``key`` is committed in the ledger."""
    key = _check_key(key)
    with engine.connect() as conn:
        return conn.execute(sa.select(ledger.c.key).where(ledger.c.key == key)).first() is not None


def forget(engine: Engine, key: str) -> bool:
    """Delete ``key`` from the ledger (to run an effect again on purpose); True if it was there."""
    key = _check_key(key)
    with connect_write(engine) as conn:
        return bool(conn.execute(sa.delete(ledger).where(ledger.c.key == key)).rowcount)
