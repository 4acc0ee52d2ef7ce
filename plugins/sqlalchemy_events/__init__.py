"""SQLAlchemy event store backend (PostgreSQL with psycopg 3, SQLite).

Public names: :class:`SqlEventStore`, the outbox (:func:`outbox_put`,
:class:`OutboxRelay`), the idempotency ledger (:func:`once`) and the
migrations (:func:`upgrade`).
"""

from __future__ import annotations

from ._ledger import forget, once, recorded
from ._outbox import OutboxRelay, outbox_put
from ._store import SqlEventStore
from .migrations import upgrade

__all__ = ["OutboxRelay", "SqlEventStore", "forget", "once", "outbox_put", "recorded", "upgrade"]
