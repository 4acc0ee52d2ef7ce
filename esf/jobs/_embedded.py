"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several processes.

Messages cross processes through one SQLite file (WAL mode, busy timeout), so
a second terminal can enqueue into a running embedded worker. It is meant for
one machine: a worker that is killed loses the jobs it had fetched.
"""

from __future__ import annotations

from typing import Any

from kombu.transport.sqlalchemy import Channel as SqlaChannel
from kombu.transport.sqlalchemy import Transport as SqlaTransport
from sqlalchemy import event

from .._sqlite import enable_wal

#: Seconds between two polls of an empty queue.
POLLING_INTERVAL_S = 0.1


class Channel(SqlaChannel):  # type: ignore[misc]
    def _engine_from_config(self) -> Any:
        engine = super()._engine_from_config()

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            enable_wal(cur)
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine


class Transport(SqlaTransport):  # type: ignore[misc]
    Channel = Channel
    polling_interval = POLLING_INTERVAL_S
