"""SQLAlchemy event store backend (PostgreSQL with psycopg 3, SQLite).

Public names: :class:`SqlEventStore`, the outbox (:func:`outbox_put`,
:class:`OutboxRelay`), the idempotency ledger (:func:`once`), subscription state
(:class:`SqlSubscriptionBackend`), job rollups (:class:`SqlJobRollups`), saga instances (:class:`SqlSagaBackend`)
and the migrations (:func:`upgrade`).
"""

from __future__ import annotations

from ._engine import redact
from ._ledger import forget, once, recorded
from ._outbox import OutboxRelay, outbox_put
from ._rollups import SqlJobRollups
from ._sagas import SqlSagaBackend
from ._store import SqlEventStore
from ._subscriptions import SqlSubscriptionBackend
from .migrations import upgrade

__all__ = ["OutboxRelay", "SqlEventStore", "SqlJobRollups", "SqlSagaBackend", "SqlSubscriptionBackend", "forget",
           "once", "outbox_put", "recorded", "redact", "upgrade"]
