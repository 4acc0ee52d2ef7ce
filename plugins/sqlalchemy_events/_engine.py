"""Engines for the event store: PostgreSQL (psycopg 3) and SQLite (file, WAL)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from esf._sqlite import enable_wal
from esf.errors import ServiceUnavailable, ValidationError

__all__ = ["connect_write", "is_unreachable", "make_engine", "normalize_url", "redact", "unavailable"]

#: Seconds to wait for a PostgreSQL connection before the server counts as unreachable.
PG_CONNECT_TIMEOUT_S = 5
#: Seconds one PostgreSQL call on an open connection may wait without an answer (see ``_read_timeout``).
PG_READ_TIMEOUT_S = 30.0
#: Milliseconds SQLite waits on a locked database before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite page cache per connection, in KiB.
SQLITE_CACHE_KIB = 65_536
#: Execution option that makes the SQLite ``begin`` take the write lock at once.
WRITE_OPTION = "esf_write"


def normalize_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3); SQLite and explicit drivers unchanged.

    Raises:
        ValidationError: not a PostgreSQL or SQLite URL.
    """
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    if url.startswith(("postgresql+", "sqlite:")):
        return url
    raise ValidationError(f"event store URL {redact(url)!r}: expected postgresql://… or sqlite:///…")


def redact(url: str) -> str:
    """The URL with its password replaced by ``****``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def make_engine(url: str, *, pool_size: int = 5, connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
                statement_timeout_s: float = 0.0, read_timeout_s: float = PG_READ_TIMEOUT_S) -> Engine:
    """An engine for ``url``; on SQLite, WAL mode and explicit ``BEGIN``/``BEGIN IMMEDIATE``.

    On PostgreSQL a connection attempt gives up after ``connect_timeout_s`` (whole seconds, at
    least 1); when ``statement_timeout_s`` is above 0, the server cancels a statement
    running longer (``statement_timeout``); when ``read_timeout_s`` is above 0 (psycopg 3), a
    call on an open connection that waits that long for the server without an answer closes
    the connection and fails (``_read_timeout.ReadTimeout``, the connection invalidated), except
    inside ``long_calls`` blocks.

    Raises:
        ValidationError: unsupported URL, or an in-memory SQLite database (not shareable between connections).
    """
    url = normalize_url(url)
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            raise ValidationError("the event store needs a SQLite file, not an in-memory database")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=10,
        )
        _sqlite_listeners(engine)
        return engine
    engine = sa.create_engine(
        parsed,
        # prepare_threshold=None: no server-side prepared statements, so PostgreSQL plans
        # each ``data @> $1`` with its value (a generic plan is 5-10x slower on selective values).
        connect_args=pg_connect_args(connect_timeout_s, statement_timeout_s),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=True,
    )
    if read_timeout_s > 0 and engine.dialect.driver == "psycopg":
        from ._read_timeout import install

        install(engine, read_timeout_s, statement_timeout_s)
    return engine


def pg_connect_args(connect_timeout_s: float, statement_timeout_s: float) -> dict[str, Any]:
    """psycopg connection arguments: connect timeout, statement timeout, no server-side prepares."""
    args: dict[str, Any] = {"connect_timeout": max(1, round(connect_timeout_s)), "application_name": "esf-events",
                            "prepare_threshold": None}
    if statement_timeout_s > 0:
        args["options"] = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
    return args


def _sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit
        # BEGIN is deferred and cannot take the write lock up front).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        enable_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Random UUIDs make the event_id index's inserts random: keep indexes in memory.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE takes the single writer lock now: the head row read
        # and the inserts then happen under one lock, in commit order.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def connect_write(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            try:
                yield conn
            except BaseException:
                invalidate_if_closed(conn)
                raise


def invalidate_if_closed(conn: Connection) -> None:
    """Invalidate ``conn`` when its driver connection was closed under SQLAlchemy (a read timeout in a
    statement sent to psycopg directly): the rollback is then skipped, and the caller sees the error that
    closed it rather than the rollback's "the connection is closed"."""
    if conn.invalidated:
        return
    if getattr(conn.connection.driver_connection, "closed", False):
        conn.invalidate()


#: SQLSTATE classes/codes meaning "the server is not reachable / not serving": connection errors,
#: shutdowns, insufficient resources (disk full, out of memory, too many connections), and a
#: statement cancelled (57014: the statement timeout of a server too slow to serve us now).
_UNREACHABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "57014")


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot serve us now (as opposed to a SQL error).

    A connection-pool timeout (no connection free within the pool's timeout)
    counts as unreachable: the database is as unavailable to this process as
    if it were down.
    """
    if isinstance(exc, sa.exc.TimeoutError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate:
            return str(sqlstate).startswith(_UNREACHABLE_SQLSTATES)
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            return False
        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None


def unavailable(exc: BaseException, url: str) -> ServiceUnavailable:
    """The ``ServiceUnavailable`` to raise ``from exc`` (the URL's password is never included)."""
    from ._read_timeout import ReadTimeout

    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if isinstance(cause, ReadTimeout):
        return ServiceUnavailable(
            f"event store database {redact(url)} did not answer within the read timeout "
            "(resilience.database_read_timeout_s); the connection was closed",
            backend="sqlalchemy",
        )
    if getattr(cause, "sqlstate", None) == "57014":
        return ServiceUnavailable(
            f"event store database {redact(url)} cancelled a statement at its statement timeout "
            "(resilience.database_statement_timeout_s): the server is too slow, or a lock is held",
            backend="sqlalchemy",
        )
    return ServiceUnavailable(
        f"event store database {redact(url)} is unreachable ({type(exc).__name__}); "
        "check that the server is running and reachable",
        backend="sqlalchemy",
    )
