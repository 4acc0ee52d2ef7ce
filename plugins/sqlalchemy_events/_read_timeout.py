"""A client-side read timeout for PostgreSQL calls on open connections (psycopg 3).

The server's ``statement_timeout`` stops a *slow* statement: the server cancels it
and answers with an error. A *silent* server (hung, or behind a network that
stopped delivering while something on the way still acknowledges the packets,
so that TCP keepalives and ``tcp_user_timeout`` never fire) answers nothing, and
libpq would wait until the operating system gives the socket up.

Every wait of psycopg for its server goes through ``Connection.wait(gen)``: the
driver runs a generator that yields whenever it would block, and since psycopg
3.2 the wait function wakes the generator every 0.1 s even when nothing is
ready (``Ready.NONE``), so that Ctrl-C can interrupt it. A
:class:`DeadlineConnection` wraps each of those generators: when a wait has had
no progress (nothing readable or writable) for longer than its limit, it closes
the connection and raises :class:`ReadTimeout`. SQLAlchemy sees a closed
connection (its psycopg dialect's ``is_disconnect``) and invalidates it; the
event store maps the failure to ``ServiceUnavailable`` (an append spools). No
thread and no timer: the check rides on the wake-ups psycopg already makes,
and nothing needs resetting after a fork.

One limit applies to every call (``read_timeout_s``); a block of calls that
legitimately wait long for the server (queries, catch-up reads, projection
rebuilds, retention) runs under :func:`long_calls`, which raises the limit to
the statement timeout plus the read timeout (by then the server has answered,
with rows or with its cancellation), or lifts it (migrations).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["DeadlineConnection", "ReadTimeout", "install", "long_calls"]

T = TypeVar("T")


class ReadTimeout(psycopg.OperationalError):
    """The server did not answer one call within the read timeout; the connection was closed."""


def _bounded(gen: Generator[Any, Any, T], limit_s: float) -> Generator[Any, Any, T]:
    """``gen``, failing with :class:`ReadTimeout` once ``limit_s`` pass without the socket being ready."""
    try:
        state = next(gen)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    deadline = time.monotonic() + limit_s
    while True:
        ready = yield state
        if ready:
            deadline = time.monotonic() + limit_s
        elif time.monotonic() >= deadline:
            raise ReadTimeout(f"no answer from the server within {limit_s:g} s (read timeout); connection closed")
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends after ``limit_s`` without progress.

    ``read_timeout_s`` is the ordinary limit, ``long_timeout_s`` the limit inside
    :func:`long_calls` (None: no limit); ``limit_s`` is the one in force.
    """

    read_timeout_s: float | None = None
    long_timeout_s: float | None = None
    limit_s: float | None = None

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """psycopg's wait, bounded by ``limit_s``.

        Raises:
            ReadTimeout: no progress within ``limit_s``; the connection is closed (``broken``).
        """
        limit = self.limit_s
        if limit is None:
            return super().wait(gen, *args, **kwargs)
        try:
            return super().wait(_bounded(gen, limit), *args, **kwargs)
        except ReadTimeout:
            # The answer of the call is still owed: the connection cannot be used again.
            self.pgconn.finish()
            raise


def install(engine: Engine, read_timeout_s: float, statement_timeout_s: float) -> None:
    """Make ``engine`` (PostgreSQL on psycopg 3) connect with :class:`DeadlineConnection`.

    Parameters:
        engine: an engine whose driver is psycopg.
        read_timeout_s: seconds one call may wait without progress (above 0).
        statement_timeout_s: the server's statement timeout (0: none); the limit of
            :func:`long_calls` is this plus ``read_timeout_s``, or no limit when it is 0.
    """
    from sqlalchemy import event

    long_s = statement_timeout_s + read_timeout_s if statement_timeout_s > 0 else None

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> DeadlineConnection:
        conn = DeadlineConnection.connect(*cargs, **cparams)
        conn.read_timeout_s = conn.limit_s = read_timeout_s
        conn.long_timeout_s = long_s
        return conn


@contextlib.contextmanager
def long_calls(conn: Connection, *, unbounded: bool = False) -> Iterator[Connection]:
    """``conn``, its calls waiting up to the long limit (``unbounded``: without limit) while the block runs.

    A no-op on a connection without a read timeout (SQLite, other drivers).
    """
    raw = conn.connection.driver_connection
    if not isinstance(raw, DeadlineConnection):
        yield conn
        return
    before = raw.limit_s
    raw.limit_s = None if unbounded else raw.long_timeout_s
    try:
        yield conn
    finally:
        raw.limit_s = before
