"""``SqlEventStore``: the event store on PostgreSQL (psycopg 3) or SQLite (file, WAL)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from esf.errors import CircuitOpen, NotFound, ServiceUnavailable, ValidationError
from esf.events._contract import AppendResult
from esf.events._model import Event, StoredEvent
from esf.events._spool import QuarantinedEntry, Spool
from esf.events._validation import (
    DEFAULT_MAX_EVENT_BYTES,
    PreparedEvent,
    check_event_id,
    check_event_type,
    check_stream_id,
    iter_prepared,
    prepare_events,
)
from esf.lifecycle import track_fork

from . import _ledger
from ._append import IN_CHUNK, append_in, row_to_event, select_events
from ._copy import COPY_MIN_EVENTS, IdsExist, copy_append
from ._engine import (
    PG_CONNECT_TIMEOUT_S,
    PG_READ_TIMEOUT_S,
    connect_write,
    is_unreachable,
    make_engine,
    normalize_url,
    redact,
    unavailable,
)
from ._outbox import Dispatch, OutboxRelay
from ._query import SqlQueryMixin
from ._read_timeout import long_calls
from ._schema import checkpoints, event_head, events, streams
from ._spooler import DEFAULT_MAX_ATTEMPTS, Spooler, database_breaker

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["SqlEventStore"]

log = logging.getLogger("esf.events")

_T = TypeVar("_T")


class SqlEventStore(SqlQueryMixin):
    """The event store on SQLAlchemy (see :class:`esf.events.EventStore` for the contract).

    Parameters:
        url: ``postgresql://…`` (psycopg 3 is used) or ``sqlite:///path/to/file``.
        max_event_bytes: largest event accepted (``settings.events.max_event_bytes``).
        node: the node name stored with each event (default: the host name).
        spool_path: a local SQLite file for appends made while the database is
            unreachable (see :class:`~esf.events.AppendResult`); ``None``
            disables spooling (appends then raise ``ServiceUnavailable``).
        migrate: run the migrations (idempotent) before the first use.
        engine: use this engine instead of creating one (tests, shared pools).
        pool_size: connections kept in the pool.
        spool_max_attempts: failed writes of one spooled entry, while the
            database is reachable, before the entry is quarantined (see
            :meth:`spool_quarantine`).
        connect_timeout_s: PostgreSQL: seconds a connection attempt may take.
        statement_timeout_s: PostgreSQL: the server cancels a statement running longer (0: never).
        read_timeout_s: PostgreSQL: a call on an open connection that waits this long without an
            answer closes the connection and fails (0: no limit); see ``_read_timeout``.

    Raises:
        ValidationError: unsupported URL, an in-memory SQLite database, or ``spool_max_attempts`` below 1.
    """

    def __init__(
        self,
        url: str,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        node: str | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        migrate: bool = True,
        engine: Engine | None = None,
        pool_size: int = 5,
        spool_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
        statement_timeout_s: float = 0.0,
        read_timeout_s: float = PG_READ_TIMEOUT_S,
    ) -> None:
        self.url = normalize_url(url)
        self.engine = engine if engine is not None else make_engine(self.url, pool_size=pool_size,
                                                                    connect_timeout_s=connect_timeout_s,
                                                                    statement_timeout_s=statement_timeout_s,
                                                                    read_timeout_s=read_timeout_s)
        self._engine = self.engine
        track_fork(self)
        self.backend: str = self.engine.dialect.name
        #: Large batches stream through COPY (PostgreSQL on psycopg 3).
        self._copies = self.backend == "postgresql" and self.engine.dialect.driver == "psycopg"
        self.max_event_bytes = max_event_bytes
        self.node = node or socket.gethostname()
        self.breaker = database_breaker()
        self._schema_ready = not migrate
        self._schema_lock = threading.Lock()
        self._closed = False
        self.spooler: Spooler | None = None
        if spool_path is not None:
            self.spooler = Spooler(Spool(Path(spool_path)), self._write_spooled, self.get_many, breaker=self.breaker,
                                   max_attempts=spool_max_attempts)
        if migrate:
            try:
                self._ensure_schema()
            except ServiceUnavailable as exc:
                # Services start in any order: migrate on first use instead.
                log.warning("event store: %s; migrations will run on first use", exc)

    def __repr__(self) -> str:
        return f"SqlEventStore({redact(self.url)!r})"

    @staticmethod
    def preload(url: str) -> None:
        """Import what the first append to ``url`` would import (its driver, the migration scripts).

        A process that forks workers calls this first, so that no worker pays it
        on its first job.
        """
        from .migrations import head_revision

        sa.engine.make_url(normalize_url(url)).get_dialect().import_dbapi()
        head_revision()

    # -- plumbing ---------------------------------------------------------

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        from .migrations import upgrade

        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                upgrade(self.engine)
            except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
                if is_unreachable(exc):
                    raise unavailable(exc, self.url) from exc
                raise
            self._schema_ready = True

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        self._ensure_schema()
        try:
            with self.engine.connect() as conn:
                yield conn
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            if is_unreachable(exc):
                raise unavailable(exc, self.url) from exc
            raise

    def _transaction(self, work: Callable[[sa.Connection], _T]) -> _T:
        """``work`` in one write transaction on a pooled connection; maps "unreachable" to ServiceUnavailable."""
        try:
            self._ensure_schema()
            with connect_write(self.engine) as conn:
                result = work(conn)
        except ServiceUnavailable:
            self.breaker.record_failure()
            raise
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            if is_unreachable(exc):
                self.breaker.record_failure()
                raise unavailable(exc, self.url) from exc
            raise
        self.breaker.record_success()
        return result

    def _write(self, prepared: Sequence[PreparedEvent], expected_version: int | None) -> AppendResult:
        stored, already = self._transaction(lambda conn: append_in(conn, prepared, expected_version, self.node))
        return AppendResult(stored, already_stored=already)

    def _append_copy(self, batch: Sequence[Event]) -> AppendResult:
        """A large batch through ``COPY``, validated while it streams (see :mod:`._copy`)."""
        prepared: list[PreparedEvent] = []
        source = iter_prepared(batch, self.max_event_bytes)
        try:
            stored = self._transaction(
                lambda conn: copy_append(conn.connection.driver_connection, batch, source, prepared, self.node)
            )
        except IdsExist:
            prepared.extend(source)
            return self._write(prepared, None)
        except ServiceUnavailable as exc:
            if self.spooler is None:
                raise
            prepared.extend(source)
            return self.spooler.put(prepared, cause=exc)
        return AppendResult(stored)

    def _write_spooled(self, prepared: Sequence[PreparedEvent]) -> object:
        return self._write(prepared, None)

    # -- EventStore -------------------------------------------------------

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        session: Session | None = None,
    ) -> AppendResult:
        """Append one event or a batch atomically (contract: :meth:`esf.events.EventStore.append`)."""
        if (
            session is None
            and expected_version is None
            and self._copies
            and not isinstance(events, Event)
            and len(events) >= COPY_MIN_EVENTS
            and not self.breaker.is_open()
            and (self.spooler is None or not self.spooler.should_spool())
        ):
            return self._append_copy(events)
        prepared = prepare_events(events, max_event_bytes=self.max_event_bytes, expected_version=expected_version)
        if session is not None:
            self._ensure_schema()
            try:
                stored, already = append_in(session.connection(), prepared, expected_version, self.node)
            except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
                if is_unreachable(exc):
                    raise unavailable(exc, self.url) from exc
                raise
            return AppendResult(stored, already_stored=already)
        spooler = self.spooler
        can_spool = spooler is not None and expected_version is None
        if spooler is not None and can_spool and spooler.should_spool():
            return spooler.put(prepared)
        if self.breaker.is_open():
            raise CircuitOpen(
                f"event store {redact(self.url)} is unreachable (circuit open) and this append cannot be spooled "
                "(expected_version given, or no spool configured): retry later"
            )
        try:
            return self._write(prepared, expected_version)
        except ServiceUnavailable as exc:
            if spooler is not None and can_spool:
                return spooler.put(prepared, cause=exc)
            raise

    def get(self, event_id: str) -> StoredEvent:
        """The event with this id (contract: :meth:`esf.events.EventStore.get`)."""
        eid = check_event_id(event_id)
        with self._reading() as conn:
            row = conn.execute(select_events().where(events.c.event_id == eid)).first()
        if row is None:
            raise NotFound(f"no event with id {eid}", event_id=eid)
        return row_to_event(row)

    def get_many(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        """The events with these ids, in the order given.

        Raises:
            NotFound: one of them is not stored.
            ServiceUnavailable: the database is unreachable.
        """
        ids = [check_event_id(e) for e in event_ids]
        found: dict[str, StoredEvent] = {}
        with self._reading() as conn:
            for i in range(0, len(ids), IN_CHUNK):
                for row in conn.execute(select_events().where(events.c.event_id.in_(ids[i : i + IN_CHUNK]))):
                    found[row.event_id] = row_to_event(row)
        missing = [e for e in ids if e not in found]
        if missing:
            raise NotFound(f"no event with id {missing[0]}", event_id=missing[0])
        return [found[e] for e in ids]

    def read_stream(self, stream_id: str, *, from_version: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Events of one stream in version order (contract: :meth:`esf.events.EventStore.read_stream`)."""
        check_stream_id(stream_id)
        _check_int(from_version, "from_version", 0)
        stmt = (
            select_events()
            .where(events.c.stream_id == stream_id, events.c.stream_version >= from_version)
            .order_by(events.c.stream_version)
        )
        if limit is not None:
            _check_int(limit, "limit", 1)
            stmt = stmt.limit(limit)
        with self._reading() as conn:
            return [row_to_event(r) for r in conn.execute(stmt)]

    def stream_version(self, stream_id: str) -> int:
        """The version of a stream (0 when it has no event).

        Raises:
            ValidationError: bad stream id.
            ServiceUnavailable: the database is unreachable.
        """
        check_stream_id(stream_id)
        with self._reading() as conn:
            version = conn.execute(sa.select(streams.c.version).where(streams.c.stream_id == stream_id)).scalar()
        return int(version or 0)

    def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events after a position, in position order (contract: :meth:`esf.events.EventStore.read_all`)."""
        _check_int(after_position, "after_position", 0)
        _check_int(limit, "limit", 1)
        stmt = select_events().where(events.c.position > after_position).order_by(events.c.position).limit(limit)
        with self._reading() as conn:
            return [row_to_event(r) for r in conn.execute(stmt)]

    def read_correlation(self, correlation_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
        """Events of one correlation id in position order (contract: :meth:`esf.events.EventStore.read_correlation`)."""
        if not isinstance(correlation_id, str) or not correlation_id:
            raise ValidationError("correlation_id: must be a non-empty string")
        _check_int(limit, "limit", 1)
        stmt = select_events().where(events.c.correlation_id == correlation_id).order_by(events.c.position).limit(limit)
        with self._reading() as conn:
            return [row_to_event(r) for r in conn.execute(stmt)]

    def head(self) -> int:
        """The last committed position (contract: :meth:`esf.events.EventStore.head`)."""
        with self._reading() as conn:
            return int(conn.execute(sa.select(event_head.c.position).where(event_head.c.id == 1)).scalar_one())

    def prune(self, *, older_than: timedelta, types: Sequence[str] | None = None) -> int:
        """Delete old events, keeping what streams and subscriptions need (see ``EventStore.prune``)."""
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise ValidationError("older_than: must be a non-negative timedelta (e.g. timedelta(days=90))")
        type_list = None if types is None else [check_event_type(t) for t in types]
        if type_list is not None and not type_list:
            return 0
        cutoff = datetime.now(UTC) - older_than
        latest = sa.select(streams.c.version).where(streams.c.stream_id == events.c.stream_id).scalar_subquery()
        conditions = [events.c.recorded_at < cutoff, events.c.stream_version < latest]
        if type_list is not None:
            conditions.append(events.c.event_type.in_(type_list))
        self._ensure_schema()
        try:
            with connect_write(self.engine) as conn, long_calls(conn):
                lowest = conn.execute(sa.select(sa.func.min(checkpoints.c.position))).scalar()
                if lowest is not None:
                    conditions.append(events.c.position <= int(lowest))
                result = conn.execute(sa.delete(events).where(*conditions))
                deleted = int(result.rowcount or 0)
        except sa.exc.DBAPIError as exc:
            if is_unreachable(exc):
                raise unavailable(exc, self.url) from exc
            raise
        if deleted:
            log.info("pruned %d events recorded before %s", deleted, cutoff.isoformat())
        return deleted

    def health(self) -> dict[str, Any]:
        """Status, head and spool depth (contract: :meth:`esf.events.EventStore.health`); never raises."""
        info: dict[str, Any] = {
            "backend": self.backend,
            "database": redact(self.url),
            "breaker": self.breaker.state,
            "spool_depth": 0,
            "head": None,
        }
        reachable = False
        if not self.breaker.is_open():
            try:
                info["head"] = self.head()
                reachable = True
            except Exception as exc:
                info["error"] = f"{type(exc).__name__}: {exc}"
        if self.spooler is not None:
            try:
                info["spool_depth"] = self.spooler.depth()
                info["spool_dead"] = self.spooler.spool.dead_count()
                info["spool_quarantined"] = self.spooler.spool.quarantine_count()
            except Exception as exc:  # the spool file itself is broken: say so
                info["spool_error"] = f"{type(exc).__name__}: {exc}"
        set_aside = info.get("spool_dead") or info.get("spool_quarantined")
        if reachable and not info["spool_depth"] and not set_aside and "spool_error" not in info:
            info["status"] = "ok"
        elif reachable or (self.spooler is not None and "spool_error" not in info):
            info["status"] = "degraded"  # appends are still accepted (spooled)
        else:
            info["status"] = "down"
        return info

    def spool_quarantine(self, limit: int = 100) -> list[QuarantinedEntry]:
        """Spooled entries set aside after failing again and again (contract:
        :meth:`esf.events.EventStore.spool_quarantine`); a read, nothing moves."""
        if self.spooler is None:
            return []
        return self.spooler.spool.quarantined(limit)

    def retry_quarantined(self, entry_ids: Sequence[int] | None = None) -> list[int]:
        """Put quarantined entries back in the spool at their original place and start flushing (contract:
        :meth:`esf.events.EventStore.retry_quarantined`)."""
        if self.spooler is None:
            return []
        return self.spooler.retry(None if entry_ids is None else list(entry_ids))

    def flush_spool(self, timeout: float | None = None) -> bool:
        """Block until every spooled event is written or quarantined (True), or ``timeout`` seconds passed (False)."""
        if self.spooler is None:
            return True
        return self.spooler.flush(timeout)

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): drop the parent's pooled connections without
        closing them, the parent keeps using them."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        """Stop the spool flusher and dispose of the connection pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.spooler is not None:
            self.spooler.close()
        self.engine.dispose()

    # -- outbox and idempotency ledger -------------------------------------

    def once(
        self, key: str, *, session: Session | None = None, job_id: str | None = None
    ) -> AbstractContextManager[bool]:
        """The idempotency ledger: see :func:`esf.plugins.sqlalchemy_events.once`.

        Usage::

            with store.once(f"charge:{order_id}", session=s) as first:
                if first:
                    ...  # effects, written with ``s``
            s.commit()
        """
        self._ensure_schema()
        return _ledger.once(session if session is not None else self.engine, key, job_id=job_id)

    def outbox_relay(self, dispatch: Dispatch, *, kind: str) -> OutboxRelay:
        """An :class:`OutboxRelay` of ``kind``'s rows on this store's engine (contract:
        :meth:`esf.events.EventStore.outbox_relay`)."""
        self._ensure_schema()
        return OutboxRelay(self.engine, dispatch, kind=kind)


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{name}: must be an integer >= {minimum}, got {value!r}", errors={name: "invalid"})
