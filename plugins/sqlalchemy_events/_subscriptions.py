"""Subscription state on SQLAlchemy: the read cursor, the batches in flight, the checkpoint.

A subscription reads the events that match its filter in position order and
cuts them into batches. Every batch is a row of
``esf_subscription_batches`` until its handler succeeded:

- ``queued``: read and assigned, not sent yet (one of its keys is busy, or the
  subscription has ``max_in_flight`` batches out already);
- ``sent``: its handler job is in the outbox or on its queue;
- ``dead``: its handler job was dead-lettered (kept for the replay).

A batch holds whole groups of keys read together (several keys, up to
``batch_size`` events); no key is ever in two ``sent`` batches, and a batch
is sent only when none of its keys is in an older batch still queued, so the
events of one key are handled one batch at a time, in position order. The checkpoint
(``esf_checkpoints``) is the highest position P such that every matching event
at or below P was handled (or dead-lettered): one below the first position of
the oldest batch still queued or sent, or the cursor when there is none.

Everything the dispatcher does in one tick (read, cut, mark sent, write the
handler jobs into ``esf_outbox``) commits in one transaction: a dispatcher
that dies half-way leaves nothing half-done, and a job is sent if and only if
its batch is marked sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from esf.events._model import StoredEvent
from esf.events._query import Filter

from ._batching import cut, lock_statement
from ._engine import WRITE_OPTION, connect_write, invalidate_if_closed
from ._query_sql import compile_filter, event_columns, row_to_event
from ._read_timeout import long_calls
from ._rebuild import Rebuilder
from ._schema import checkpoints, event_head, events, subscription_batches, subscriptions
from ._sending import Held, MakeJob, Publish, mark_sent, publish_held, write_fresh

__all__ = ["SqlSubscriptionBackend", "TickResult"]

QUEUED, SENT, DEAD = "queued", "sent", "dead"
#: Longest stored error text, in characters.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class TickResult:
    """What one dispatcher tick did.

    Attributes:
        read: matching events read and cut into batches.
        sent: batches whose handler jobs were written to the outbox.
        cursor: the read cursor after the tick.
        skipped: another dispatcher held the subscription (nothing done).
        outbox_ids: the outbox rows of the jobs sent, for the caller to relay at once.
    """

    read: int = 0
    sent: int = 0
    cursor: int = 0
    skipped: bool = False
    outbox_ids: tuple[int, ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Fresh:
    """A batch inserted by this tick (what ``_mark_sent`` needs of it)."""

    id: int
    partition_keys: list[str]
    positions: list[int]
    correlation_id: str | None


class SqlSubscriptionBackend:
    """Subscription state in the event store's database (PostgreSQL or SQLite).

    Parameters:
        engine: the event store's engine (its tables exist: the store migrated them).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._filters: dict[Filter, Any] = {}

    # -- registry ------------------------------------------------------------

    def ensure(self, name: str, *, start: int | str, spec: dict[str, Any]) -> bool:
        """Create the subscription at ``start`` unless it exists; refresh its description.

        Parameters:
            name: the subscription's name.
            start: ``"beginning"`` (position 0), ``"now"`` (the head) or a position.
            spec: a JSON description (filter, partitioning, batch size …) shown by the CLI.

        Returns:
            True when the subscription was created by this call.
        """
        with connect_write(self.engine) as conn:
            exists = conn.execute(sa.select(subscriptions.c.name).where(subscriptions.c.name == name)).first()
            if exists is not None:
                conn.execute(sa.update(subscriptions).where(subscriptions.c.name == name)
                             .values(spec=spec, updated_at=_now()))
                return False
            if start == "beginning":
                position = 0
            elif start == "now":
                position = int(conn.execute(sa.select(event_head.c.position)).scalar_one())
            else:
                position = int(start)
            now = _now()
            conn.execute(sa.insert(subscriptions).values(name=name, cursor=position, paused=False,
                                                         stopped_reason=None, spec=spec, created_at=now,
                                                         updated_at=now))
            self._set_checkpoint(conn, name, position)
            return True

    def names(self) -> list[str]:
        """Every subscription stored, by name."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(subscriptions.c.name).order_by(subscriptions.c.name))]

    def status(self, name: str) -> dict[str, Any] | None:
        """The stored state of one subscription, or None when it does not exist.

        Returns:
            ``name, cursor, checkpoint, head, lag_events, lag_seconds, paused, stopped_reason,
            queued, sent, dead, spec, dead_batches`` (the dead batches' ids, positions and errors).
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(subscriptions).where(subscriptions.c.name == name)).first()
            if row is None:
                return None
            head = int(conn.execute(sa.select(event_head.c.position)).scalar_one())
            ck = conn.execute(sa.select(checkpoints.c.position).where(checkpoints.c.name == name)).scalar()
            checkpoint = int(ck if ck is not None else row.cursor)
            counts = {QUEUED: 0, SENT: 0, DEAD: 0}
            for state, n in conn.execute(
                sa.select(subscription_batches.c.state, sa.func.count())
                .where(subscription_batches.c.name == name).group_by(subscription_batches.c.state)
            ):
                counts[state] = int(n)
            oldest = conn.execute(
                sa.select(events.c.recorded_at).where(events.c.position > checkpoint)
                .order_by(events.c.position).limit(1)
            ).scalar()
            dead = [
                {"batch": r.id, "positions": list(r.positions), "job_id": r.job_id, "error": r.error}
                for r in conn.execute(
                    sa.select(subscription_batches).where(subscription_batches.c.name == name,
                                                          subscription_batches.c.state == DEAD)
                    .order_by(subscription_batches.c.id).limit(100)
                )
            ]
        lag_s = 0.0
        if oldest is not None and head > checkpoint:
            recorded = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            lag_s = max(0.0, (_now() - recorded).total_seconds())
        return {
            "name": name, "cursor": int(row.cursor), "checkpoint": checkpoint, "head": head,
            "lag_events": max(0, head - checkpoint), "lag_seconds": round(lag_s, 3),
            "paused": bool(row.paused), "stopped_reason": row.stopped_reason,
            "queued": counts[QUEUED], "sent": counts[SENT], "dead": counts[DEAD],
            "spec": dict(row.spec), "dead_batches": dead,
        }

    # -- control -------------------------------------------------------------

    def _update(self, name: str, **values: Any) -> bool:
        with connect_write(self.engine) as conn:
            n = conn.execute(sa.update(subscriptions).where(subscriptions.c.name == name)
                             .values(updated_at=_now(), **values)).rowcount
        return bool(n)

    def pause(self, name: str, reason: str | None = None) -> bool:
        """Stop sending new batches (those sent finish). Returns False for an unknown name."""
        return self._update(name, paused=True, stopped_reason=reason)

    def resume(self, name: str) -> bool:
        """Send batches again. Returns False for an unknown name."""
        return self._update(name, paused=False, stopped_reason=None)

    def reset(self, name: str, position: int) -> bool:
        """Deliver again from ``position + 1``: cursor and checkpoint at ``position``.

        Batches queued or sent are forgotten (a job of theirs still running finds
        its batch gone and does nothing more); dead batches stay for the replay.

        Returns:
            False for an unknown name.
        """
        with connect_write(self.engine) as conn:
            if not self._lock(conn, name, wait=True):
                return False
            conn.execute(sa.delete(subscription_batches).where(subscription_batches.c.name == name,
                                                               subscription_batches.c.state != DEAD))
            conn.execute(sa.update(subscriptions).where(subscriptions.c.name == name)
                         .values(cursor=position, updated_at=_now()))
            conn.execute(sa.delete(checkpoints).where(checkpoints.c.name == name))
            self._set_checkpoint(conn, name, position)
        return True

    def delete(self, name: str) -> bool:
        """Remove the subscription's state (cursor, batches, checkpoint). Returns False when unknown."""
        with connect_write(self.engine) as conn:
            conn.execute(sa.delete(subscription_batches).where(subscription_batches.c.name == name))
            conn.execute(sa.delete(checkpoints).where(checkpoints.c.name == name))
            n = conn.execute(sa.delete(subscriptions).where(subscriptions.c.name == name)).rowcount
        return bool(n)

    def position_at(self, when: datetime) -> int:
        """The last position recorded before ``when`` (0 when none)."""
        with self.engine.connect() as conn, long_calls(conn):
            value = conn.execute(sa.select(sa.func.max(events.c.position)).where(events.c.recorded_at < when)).scalar()
        return int(value or 0)

    # -- dispatching -----------------------------------------------------------

    def _lock(self, conn: Connection, name: str, *, wait: bool, counts: bool = False) -> Any:
        """The subscription's row, locked, with the store's head and (``counts``) its batches queued and sent.

        One round trip.
        """
        return conn.execute(lock_statement(name, wait=wait, counts=counts, dialect=self.dialect)).first()

    def _where(self, filter: Filter | None) -> Any:
        if filter is None:
            return sa.true()
        expr = self._filters.get(filter)
        if expr is None:
            expr = self._filters[filter] = compile_filter(filter, self.dialect)
        return expr

    def tick(self, name: str, *, filter: Filter | None, partition_by: str | None, batch_size: int,
             max_in_flight: int, make_job: MakeJob, publish: Publish | None = None) -> TickResult:
        """Read new matching events into batches and send the batches whose partition is free.

        One transaction, holding the subscription's row (``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL: a second dispatcher skips it; SQLite's write lock serialises them).

        Parameters:
            name: the subscription.
            filter: the server-side filter (``None``: every event).
            partition_by: ``"stream_id"``, ``"correlation_id"`` or ``None`` (one partition).
            batch_size: most events per batch.
            max_in_flight: most batches sent and not finished at a time.
            make_job: builds the outbox payload of a batch's handler job.
            publish: sends one handler job; on PostgreSQL the tick then publishes its jobs itself right
                after the commit, holding the outbox relay's lock (see ``_sending``), and ``outbox_ids``
                lists only the rows it left for a relay. Whatever ``publish`` raised propagates (the rows
                not published stay in the outbox).
        """
        hold = publish is not None and self.dialect == "postgresql"
        with self.engine.connect() as base:
            conn = base.execution_options(**{WRITE_OPTION: True})
            try:
                # A catch-up read with a selective filter may scan long: as long as the statement timeout allows.
                with long_calls(conn), conn.begin():
                    try:
                        result, held = self._tick(conn, name, filter, partition_by, batch_size, max_in_flight,
                                                  make_job, hold=hold)
                    except BaseException:
                        invalidate_if_closed(conn)
                        raise
            except BaseException:
                # The tick may have taken the relay's session lock, which a rollback keeps: it must not
                # outlive this call on a pooled connection (ending the session releases it).
                if hold and not conn.invalidated:
                    conn.invalidate()
                raise
            if held is None or publish is None:
                return result
            left = publish_held(conn, held, publish)
        return replace(result, outbox_ids=tuple(left))

    def _tick(self, conn: Connection, name: str, filter: Filter | None, partition_by: str | None,
              batch_size: int, max_in_flight: int, make_job: MakeJob, *,
              hold: bool) -> tuple[TickResult, Held | None]:
        row = self._lock(conn, name, wait=False, counts=True)
        if row is None:
            return TickResult(skipped=True), None
        cursor = before = int(row.cursor)
        if row.paused:
            self._advance_checkpoint(conn, name, cursor)
            return TickResult(cursor=cursor), None
        read = 0
        values: list[dict[str, Any]] = []
        # Nothing queued or sent: the batches of this read are the whole queue (the live case).
        fresh: list[Any] | None = [] if int(row.queued) == 0 and int(row.sent) == 0 else None
        if int(row.queued) < max_in_flight:
            read, cursor, values = self._read(conn, name, cursor, int(row.head), filter, partition_by, batch_size,
                                              max_in_flight)
        if fresh is not None and values and self.dialect == "postgresql":
            ids, held = write_fresh(conn, name, values, room=max_in_flight - int(row.sent), make_job=make_job,
                                    cursor=cursor, moved=cursor != before, hold=hold)
            return TickResult(read=read, sent=len(ids), cursor=cursor, outbox_ids=tuple(ids)), held
        self._insert(conn, values, fresh)
        queued = int(row.queued) + (1 if read else 0)
        ids, held = (self._send(conn, name, max_in_flight - int(row.sent), make_job, fresh, hold=hold)
                     if queued else ([], None))
        if cursor != before or ids:
            # Otherwise nothing here moved it (completions and dead letters advance it themselves).
            self._advance_checkpoint(conn, name, cursor, moved=cursor != before)
        return TickResult(read=read, sent=len(ids), cursor=cursor, outbox_ids=tuple(ids)), held

    def _read(self, conn: Connection, name: str, cursor: int, head: int, filter: Filter | None,
              partition_by: str | None, batch_size: int,
              max_in_flight: int) -> tuple[int, int, list[dict[str, Any]]]:
        """Read new matching events and cut them into batches.

        Returns:
            (events read, the cursor to store, the new batches' rows in position order, not written yet).
        """
        # The head was read first (with the lock): every event at or below it is committed and
        # visible to the next statement (positions are commit-ordered), so the cursor may move up to it.
        if head <= cursor:
            return 0, cursor, []
        limit = batch_size * max_in_flight
        key = events.c[partition_by] if partition_by else sa.literal("")
        rows = conn.execute(
            sa.select(events.c.position, key.label("k"), events.c.correlation_id)
            .where(events.c.position > cursor, events.c.position <= head, self._where(filter))
            .order_by(events.c.position).limit(limit)
        ).all()
        new_cursor = head if len(rows) < limit else int(rows[-1][0])
        return len(rows), new_cursor, cut(rows, name, batch_size)

    def _insert(self, conn: Connection, values: list[dict[str, Any]], fresh: list[Any] | None) -> None:
        """Write new batches as queued; ``fresh``, when given, receives them (``id``, ``positions``,
        ``correlation_id``), in position order."""
        if values and fresh is not None:
            b = subscription_batches
            ids = conn.execute(sa.insert(b).returning(b.c.id, sort_by_parameter_order=True), values).scalars().all()
            fresh.extend(_Fresh(int(i), v["partition_keys"], v["positions"], v["correlation_id"])
                         for i, v in zip(ids, values, strict=True))
        elif values:
            conn.execute(sa.insert(subscription_batches), values)

    def _send(self, conn: Connection, name: str, room: int, make_job: MakeJob,
              fresh: list[Any] | None = None, *, hold: bool = False) -> tuple[list[int], Held | None]:
        """Mark the batches that may go ``sent`` and write their jobs into the outbox; returns the outbox ids
        and the jobs held for :func:`._sending.publish_held`.

        ``fresh``: the batches just read when no other batch was queued or sent: they are the whole
        queue, so the queue is not read back (the same rule picks those that go). ``hold``: see
        :func:`._sending.mark_sent`.
        """
        if room <= 0:
            return [], None
        b = subscription_batches
        busy: set[str] = set()
        rows: list[Any] = []
        if fresh:
            for f in fresh:
                if len(rows) >= room:
                    break
                free = busy.isdisjoint(f.partition_keys)
                busy.update(f.partition_keys)
                if free:
                    rows.append(f)
            return mark_sent(conn, rows, make_job, hold=hold)
        # One read of the batches sent and queued: sent ones first (their keys are busy), then the
        # queued by first position. A batch goes when none of its keys is in a batch sent, or in an
        # older batch still queued.
        for r in conn.execute(sa.select(b.c.id, b.c.state, b.c.partition_keys, b.c.positions, b.c.correlation_id)
                              .where(b.c.name == name, b.c.state.in_([SENT, QUEUED]))
                              .order_by(sa.case((b.c.state == SENT, 0), else_=1), b.c.first_position, b.c.id)):
            if len(rows) >= room:
                break
            free = r.state == QUEUED and busy.isdisjoint(r.partition_keys)
            busy.update(r.partition_keys)
            if free:
                rows.append(r)
        if not rows:
            return [], None
        return mark_sent(conn, rows, make_job, hold=hold)

    # -- handling --------------------------------------------------------------

    def batch_state(self, name: str, batch_id: int) -> str | None:
        """``queued``, ``sent``, ``dead``, or None once the batch was handled (or the subscription reset)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(subscription_batches.c.state).where(
                subscription_batches.c.id == batch_id, subscription_batches.c.name == name)).scalar()

    def load_batch(self, name: str, batch_id: int, positions: Sequence[int]) -> tuple[str | None, list[StoredEvent]]:
        """The batch's state (as :meth:`batch_state`) and the events at ``positions``.

        One statement (the state is a column of every event row; on PostgreSQL outside a
        transaction: one snapshot, no BEGIN or ROLLBACK); a second one only when no event
        is stored at ``positions``.
        """
        b = subscription_batches
        state = sa.select(b.c.state).where(b.c.id == batch_id, b.c.name == name).scalar_subquery()
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = conn.execute(sa.select(*event_columns(), state.label("batch_state"))
                                .where(events.c.position.in_(list(positions))).order_by(events.c.position)).all()
            if not rows:
                return conn.execute(sa.select(state)).scalar(), []
        found = rows[0].batch_state
        if found is None:
            return None, []
        return str(found), [row_to_event(r) for r in rows]

    def load(self, positions: Sequence[int]) -> list[StoredEvent]:
        """The stored events at ``positions``, in position order (pruned ones are missing)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*event_columns()).where(events.c.position.in_(list(positions)))
                                .order_by(events.c.position)).all()
        return [row_to_event(r) for r in rows]

    def complete(self, name: str, batch_id: int, conn: Connection | None = None) -> bool:
        """The batch's handler succeeded: forget the batch (a trigger wakes the dispatchers), advance the checkpoint.

        Parameters:
            conn: a connection in the caller's transaction (a projection's), or None for a new one.

        Returns:
            False when the batch was already gone (handled before, or reset).
        """
        if conn is None:
            with connect_write(self.engine) as own:
                return self.complete(name, batch_id, own)
        n = conn.execute(sa.delete(subscription_batches).where(subscription_batches.c.id == batch_id,
                                                               subscription_batches.c.name == name)).rowcount
        self._advance_checkpoint(conn, name)
        return bool(n)

    @contextmanager
    def handling(self, name: str, batch_id: int) -> Iterator[tuple[Connection, str | None]]:
        """A write transaction holding the batch's row: yields ``(connection, state)``.

        The caller writes its effects on the connection and calls :meth:`complete` with it;
        everything commits together when the block exits, or nothing does.
        """
        with connect_write(self.engine) as conn:
            stmt = sa.select(subscription_batches.c.state).where(subscription_batches.c.id == batch_id,
                                                                 subscription_batches.c.name == name)
            if self.dialect == "postgresql":
                stmt = stmt.with_for_update()
            yield conn, conn.execute(stmt).scalar()

    def record_error(self, name: str, batch_id: int, error: str, position: int | None = None) -> None:
        """Keep the last error of a batch's handler (shown by ``esf subscriptions show``) and its event's position."""
        with connect_write(self.engine) as conn:
            conn.execute(sa.update(subscription_batches).where(subscription_batches.c.id == batch_id,
                                                               subscription_batches.c.name == name)
                         .values(error=error[:MAX_ERROR_CHARS], failed_position=position))

    def mark_dead(self, name: str, batch_id: int, *, pause: bool, reason: str | None = None,
                  partition_by: str | None = None) -> bool:
        """The batch's handler job was dead-lettered: the DLQ holds it, its keys go on.

        When the failing event is known (:meth:`record_error`) and the batch holds other
        keys too, only the failing key's events stay in the dead batch; the others go back
        to the queue in a new batch, in their place in position order (the queue is sent
        by first position), and are delivered again.

        Parameters:
            pause: also pause the subscription (its ``on_dead_letter="pause"`` setting).
            reason: why, recorded as the subscription's ``stopped_reason`` when pausing.
            partition_by: the subscription's partition column, to tell the keys of the events apart.
        """
        b = subscription_batches
        with connect_write(self.engine) as conn:
            row = conn.execute(sa.select(b).where(b.c.id == batch_id, b.c.name == name)).first()
            if row is None:
                return False
            values: dict[str, Any] = {"state": DEAD}
            if row.failed_position is not None and partition_by and len(row.partition_keys) > 1:
                key_col = events.c[partition_by]
                keys = {int(p): (k or "") for p, k in conn.execute(
                    sa.select(events.c.position, key_col).where(events.c.position.in_(list(row.positions))))}
                bad = keys.get(int(row.failed_position))
                dead = [p for p in row.positions if keys.get(int(p)) == bad]
                rest = [p for p in row.positions if keys.get(int(p)) != bad]
                if dead and rest:
                    values.update(positions=dead, partition_keys=[bad], first_position=dead[0],
                                  last_position=dead[-1])
                    conn.execute(sa.insert(b).values(
                        name=name, partition_keys=sorted({keys[int(p)] for p in rest}), first_position=rest[0],
                        last_position=rest[-1], positions=rest, correlation_id=row.correlation_id, state=QUEUED,
                        job_id=None, created_at=_now(), sent_at=None, error=None, failed_position=None))
            conn.execute(sa.update(b).where(b.c.id == batch_id).values(**values))
            if pause:
                conn.execute(sa.update(subscriptions).where(subscriptions.c.name == name)
                             .values(paused=True, stopped_reason=(reason or "")[:MAX_ERROR_CHARS] or None,
                                     updated_at=_now()))
            self._advance_checkpoint(conn, name)
        return True

    def batch_positions(self, name: str, batch_id: int) -> list[int] | None:
        """The positions a batch holds now (a dead batch keeps only its failing key's), or None when gone."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(subscription_batches.c.positions).where(
                subscription_batches.c.id == batch_id, subscription_batches.c.name == name)).scalar()
        return None if value is None else [int(p) for p in value]

    # -- rebuilds ----------------------------------------------------------------

    def rebuilder(self, name: str, tables: Sequence[str]) -> Rebuilder:
        """The database side of a rebuild of projection ``name`` writing ``tables`` (see ``_rebuild``)."""
        return Rebuilder(self, name, tables)

    def rebuild_position(self, name: str) -> int | None:
        """How far an unfinished rebuild of ``name`` has replayed, or None when none is under way."""
        return Rebuilder(self, name, ()).position()

    # -- checkpoint --------------------------------------------------------------

    def checkpoint(self, name: str) -> int | None:
        """The stored checkpoint of ``name`` (None when it has none)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(checkpoints.c.position).where(checkpoints.c.name == name)).scalar()
        return None if value is None else int(value)

    def _advance_checkpoint(self, conn: Connection, name: str, cursor: int | None = None, *,
                            moved: bool = False) -> None:
        """Checkpoint := one below the oldest batch queued or sent, else the cursor; one statement.

        Parameters:
            cursor: the cursor when the caller has it (else read in the same statement).
            moved: also store ``cursor`` as the subscription's read cursor (on PostgreSQL in the same
                statement).
        """
        if moved and cursor is not None and self.dialect != "postgresql":
            conn.execute(sa.update(subscriptions).where(subscriptions.c.name == name)
                         .values(cursor=cursor, updated_at=_now()))
        # On PostgreSQL the cursor's update is a CTE: the statement's own reads do not see it (it uses :c).
        update = ("WITH u AS (UPDATE esf_subscriptions SET cursor = :c, updated_at = :t WHERE name = :n) "
                  if moved and cursor is not None and self.dialect == "postgresql" else "")
        greatest, least = ("GREATEST", "LEAST") if self.dialect == "postgresql" else ("MAX", "MIN")
        cursor_sql = ":c" if cursor is not None else "s.cursor"
        stmt = sa.text(
            update + "INSERT INTO esf_checkpoints (name, position, updated_at) "
            f"SELECT s.name, COALESCE({least}({cursor_sql}, (SELECT min(b.first_position) - 1 "
            "FROM esf_subscription_batches b WHERE b.name = s.name AND b.state <> 'dead')), "
            f"{cursor_sql}), :t FROM esf_subscriptions s WHERE s.name = :n "
            # "WHERE true" lets SQLite tell the upsert clause from a join (its documented ambiguity).
            + ("AND true " if self.dialect == "sqlite" else "")
            + f"ON CONFLICT (name) DO UPDATE SET position = {greatest}(esf_checkpoints.position, excluded.position), "
            "updated_at = excluded.updated_at"
        ).bindparams(sa.bindparam("t", type_=sa.DateTime(timezone=True)))
        params: dict[str, Any] = {"n": name, "t": _now()}
        if cursor is not None:
            params["c"] = cursor
        conn.execute(stmt, params)

    def _set_checkpoint(self, conn: Connection, name: str, position: int) -> None:
        # Never backwards (two transactions may compute it from different snapshots; the
        # lower value is the stale one); ``reset`` deletes the row first.
        greatest = "GREATEST" if self.dialect == "postgresql" else "MAX"
        stmt = sa.text(
            "INSERT INTO esf_checkpoints (name, position, updated_at) VALUES (:n, :p, :t) "
            f"ON CONFLICT (name) DO UPDATE SET position = {greatest}(esf_checkpoints.position, excluded.position), "
            "updated_at = excluded.updated_at"
        ).bindparams(sa.bindparam("t", type_=sa.DateTime(timezone=True)))
        conn.execute(stmt, {"n": name, "p": position, "t": _now()})
