"""Transactional outbox: messages written in the caller's transaction, dispatched after it commits.

``outbox_put(session, kind, payload)`` adds a row in the caller's SQLAlchemy
transaction: a rolled-back transaction leaves nothing to send. An
:class:`OutboxRelay` serves one ``kind``: it drains that kind's rows in
insertion order, calls ``dispatch`` for each and deletes the rows it
dispatched. Rows of other kinds are never read, dispatched or deleted by it;
each kind needs its own relay (the jobs service runs the one for
:data:`JOB_KIND` in every worker). Delivery is at least once: a relay that
dies after dispatching but before its commit dispatches those rows again, so
receivers must be idempotent (jobs get a stable id).

Relays of one kind drain one at a time (a PostgreSQL advisory lock keyed by
the kind, or SQLite's single write lock), which keeps that kind's order;
relays of different kinds do not wait for each other on PostgreSQL.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from esf.errors import PayloadTooLarge, ValidationError
from esf.events._validation import canonical_json, check_json_object

from ._engine import connect_write
from ._schema import outbox

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["JOB_KIND", "MAX_OUTBOX_PAYLOAD_BYTES", "Dispatch", "OutboxRelay", "outbox_put"]

log = logging.getLogger("esf.events.outbox")

#: ``dispatch(kind, payload)``: send one message; raise to stop the drain (the row is kept).
Dispatch = Callable[[str, dict[str, Any]], None]
#: Largest payload (canonical JSON) accepted, in bytes.
MAX_OUTBOX_PAYLOAD_BYTES = 1_048_576
#: The kind of the rows the jobs service writes (``job.enqueue(..., session=s)``).
JOB_KIND = "job"
#: First half of the PostgreSQL advisory lock that lets one relay per kind drain at a time (keeps the
#: order); the second half is the CRC-32 of the kind.
RELAY_LOCK_CLASS = 0x65_73_66_6F  # "esfo"


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not 1 <= len(kind) <= 50:
        raise ValidationError(f"outbox kind {kind!r}: must be a string of 1 to 50 characters")
    return kind


def relay_lock_key(kind: str) -> tuple[int, int]:
    """The two 32-bit keys of the advisory lock held by the relay draining ``kind`` (PostgreSQL)."""
    crc = zlib.crc32(kind.encode("utf-8"))
    return RELAY_LOCK_CLASS, crc - (1 << 32) if crc >= 1 << 31 else crc


def outbox_put(session: Session, kind: str, payload: Mapping[str, Any]) -> int:
    """Add a message to the outbox inside the caller's transaction (not committed here).

    Parameters:
        session: the caller's SQLAlchemy session; its commit makes the message
            visible to the relay, its rollback discards it.
        kind: what the message is, e.g. ``"job"`` (1-50 characters).
        payload: a JSON object (same rules as event data).

    Returns:
        The outbox row id (increasing in insertion order).

    Raises:
        ValidationError: bad ``kind``.
        SerializationError: ``payload`` is not a JSON object.
        PayloadTooLarge: ``payload`` is larger than :data:`MAX_OUTBOX_PAYLOAD_BYTES`.
    """
    _check_kind(kind)
    data = check_json_object(payload, "payload")
    size = len(canonical_json(data).encode("utf-8"))
    if size > MAX_OUTBOX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"outbox payload is {size} bytes; the limit is {MAX_OUTBOX_PAYLOAD_BYTES}")
    result = session.execute(
        sa.insert(outbox).values(created_at=datetime.now(UTC), kind=kind, payload=data).returning(outbox.c.id)
    )
    return int(result.scalar_one())


class OutboxRelay:
    """Drains the outbox rows of one kind in order, at least once.

    Parameters:
        engine: the engine of the database holding ``esf_outbox``.
        dispatch: called as ``dispatch(kind, payload)`` for each message of
            ``kind``, in insertion order. If it raises, the rows dispatched
            before are deleted (committed), the failing row and the rest stay,
            and the exception propagates from :meth:`drain`.
        kind: the only kind of row this relay reads, dispatches and deletes
            (required: a relay never guesses; :data:`JOB_KIND` is the kind of
            ``job.enqueue(..., session=)``).

    Raises:
        ValidationError: ``kind`` is not a string of 1 to 50 characters.
    """

    def __init__(self, engine: Engine, dispatch: Dispatch, *, kind: str) -> None:
        self.engine = engine
        self.dispatch = dispatch
        self.kind = _check_kind(kind)
        self._stop = threading.Event()

    def pending(self) -> int:
        """Messages of this relay's kind waiting in the outbox."""
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.kind == self.kind)
            return int(conn.execute(query).scalar_one())

    def drain(self, limit: int = 100, *, older_than_s: float | None = None) -> int:
        """Dispatch up to ``limit`` messages of this relay's kind, oldest first; returns how many were dispatched.

        Only one relay per kind drains at a time (a PostgreSQL advisory lock
        keyed by the kind, or SQLite's write lock); a relay that finds another
        one of its kind draining returns 0.

        Parameters:
            limit: most messages dispatched.
            older_than_s: only rows written at least this many seconds ago (the sweep leaves younger
                rows to the relay of the process that wrote them); None: every row.

        Raises:
            ValidationError: ``limit`` is below 1, or ``older_than_s`` is not a number >= 0.
            Exception: whatever ``dispatch`` raised (after committing the progress made).
        """
        if limit < 1:
            raise ValidationError("limit: must be at least 1")
        where = [outbox.c.kind == self.kind]
        if older_than_s is not None:
            if (isinstance(older_than_s, bool) or not isinstance(older_than_s, int | float)
                    or not math.isfinite(older_than_s) or older_than_s < 0):
                raise ValidationError(f"older_than_s: must be seconds >= 0, got {older_than_s!r}",
                                      errors={"older_than_s": "not seconds >= 0"})
            where.append(outbox.c.created_at <= datetime.now(UTC) - timedelta(seconds=older_than_s))
        done = 0
        failure: BaseException | None = None
        with connect_write(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                k1, k2 = relay_lock_key(self.kind)
                got = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k1, :k2)"), {"k1": k1, "k2": k2})
                if not got.scalar():
                    return 0
            select = (sa.select(outbox.c.id, outbox.c.kind, outbox.c.payload).where(*where)
                      .order_by(outbox.c.id).limit(limit))
            if conn.dialect.name == "postgresql":
                # Rows that :meth:`send` holds are its own to dispatch.
                select = select.with_for_update(skip_locked=True)
            rows = conn.execute(select).all()
            sent: list[int] = []
            for row in rows:
                try:
                    self.dispatch(row.kind, dict(row.payload))
                except BaseException as exc:
                    failure = exc
                    break
                sent.append(int(row.id))
            if sent:
                conn.execute(sa.delete(outbox).where(outbox.c.id.in_(sent)))
            done = len(sent)
        if failure is not None:
            log.warning("outbox dispatch failed after %d message(s): %s", done, type(failure).__name__)
            raise failure
        return done

    def send(self, ids: Sequence[int]) -> int:
        """Dispatch the rows ``ids`` (just committed by the caller) now, instead of at the next drain.

        One transaction deletes them (``DELETE … RETURNING``: a row that a drain holds or has
        sent already is not returned), dispatches them in id order and commits. If a dispatch
        raises, nothing is deleted: the rows stay for the relay's next drain (a row dispatched
        before the failure is then dispatched again).

        Returns:
            How many rows were dispatched.
        """
        if not ids:
            return 0
        with connect_write(self.engine) as conn:
            rows = conn.execute(sa.delete(outbox).where(outbox.c.id.in_(list(ids)), outbox.c.kind == self.kind)
                                .returning(outbox.c.id, outbox.c.kind, outbox.c.payload)).all()
            for row in sorted(rows, key=lambda r: int(r.id)):
                self.dispatch(row.kind, dict(row.payload))
        return len(rows)

    def run(self, *, interval_s: float = 0.5, batch: int = 100) -> None:
        """Drain until :meth:`stop` is called, sleeping ``interval_s`` when the outbox is empty or on errors."""
        while not self._stop.is_set():
            try:
                n = self.drain(batch)
            except Exception:
                log.exception("outbox relay: drain failed; retrying in %.1f s", interval_s)
                n = 0
            if n < batch:
                self._stop.wait(interval_s)

    def stop(self) -> None:
        """Make :meth:`run` return after its current drain."""
        self._stop.set()
