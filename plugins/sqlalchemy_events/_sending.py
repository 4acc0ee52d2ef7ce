"""A subscription tick's sending half: mark batches sent, write their jobs into the outbox, publish them.

The jobs of the batches a tick sends are written into ``esf_outbox`` in the
tick's transaction, so a job exists if and only if its batch is marked sent.
On PostgreSQL a tick given a ``publish`` callable also takes the job relay's
advisory lock (the session-level form of the lock every relay drain tries,
see ``_outbox``) in the same statement; after the commit it publishes the
jobs from memory on the same connection, then deletes their rows and releases
the lock in one statement. While it holds the lock no relay drains, so no job
is published twice by this path and a relay; if the process dies before the
delete, its session ends, the lock with it, and the rows are still there for
the next relay. When a relay holds the lock already, the tick leaves its rows
to the caller (``JobOutbox.send``), as on SQLite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._outbox import relay_lock_key
from ._schema import outbox, subscription_batches

log = logging.getLogger("esf.subscriptions")

#: ``make_job(batch_id, positions, correlation_id) -> outbox payload`` of the batch's handler job.
MakeJob = Callable[[int, list[int], "str | None"], dict[str, Any]]
#: ``publish(payload)`` sends one handler job (an outbox payload) to its queue.
Publish = Callable[[dict[str, Any]], None]

#: The outbox kind of the handler jobs (the jobs relay's kind).
JOB_KIND = "job"
QUEUED, SENT = "queued", "sent"

# One statement on PostgreSQL: the outbox rows, the batches marked sent, and (``hold``) the relay's lock.
# A CTE calling a volatile function is evaluated once and never inlined.
_MARK_SENT_PG = sa.text(
    "WITH o AS (INSERT INTO esf_outbox (created_at, kind, payload) "
    "SELECT :t, :kind, x.p FROM jsonb_array_elements(CAST(:payloads AS jsonb)) WITH ORDINALITY AS x(p, i) "
    "ORDER BY x.i RETURNING id, payload ->> 'job_id' AS job_id), "
    "u AS (UPDATE esf_subscription_batches b SET state = :sent, job_id = x.job, sent_at = :t "
    "FROM unnest(CAST(:bids AS bigint[]), CAST(:jobs AS text[])) AS x(id, job) WHERE b.id = x.id), "
    "h AS (SELECT CASE WHEN :hold THEN pg_try_advisory_lock(:k1, :k2) ELSE false END AS held) "
    "SELECT o.id, o.job_id, h.held FROM o CROSS JOIN h ORDER BY o.id"
).bindparams(sa.bindparam("t", type_=sa.DateTime(timezone=True)))

# The live case on PostgreSQL (no batch queued or sent before the read), in one statement: the new batches
# (those that go marked sent), their jobs in the outbox (each payload's args[0] set to its batch's id), the
# cursor, the checkpoint (one below the first new batch: no other counts), and (``hold``) the relay's lock.
_WRITE_FRESH_PG = sa.text(
    "WITH x AS MATERIALIZED (SELECT * FROM jsonb_to_recordset(CAST(:batches AS jsonb)) AS r(i int, keys jsonb, "
    "fp bigint, lp bigint, positions jsonb, corr text, send boolean, job text, payload jsonb)), "
    "new AS (INSERT INTO esf_subscription_batches (name, partition_keys, first_position, last_position, positions, "
    "correlation_id, state, job_id, created_at, sent_at) "
    "SELECT :n, x.keys, x.fp, x.lp, x.positions, x.corr, CASE WHEN x.send THEN :sent ELSE :queued END, x.job, :t, "
    "CASE WHEN x.send THEN :t END FROM x ORDER BY x.i RETURNING id, first_position), "
    "o AS (INSERT INTO esf_outbox (created_at, kind, payload) "
    "SELECT :t, :kind, jsonb_set(x.payload, '{args,0}', to_jsonb(new.id)) FROM new JOIN x ON x.fp = new.first_position "
    "WHERE x.send ORDER BY new.id RETURNING id, payload ->> 'job_id' AS job), "
    "u AS (UPDATE esf_subscriptions SET cursor = :c, updated_at = :t WHERE name = :n AND :moved), "
    "k AS (INSERT INTO esf_checkpoints (name, position, updated_at) VALUES (:n, :ckpt, :t) "
    "ON CONFLICT (name) DO UPDATE SET position = GREATEST(esf_checkpoints.position, excluded.position), "
    "updated_at = excluded.updated_at), "
    "h AS (SELECT CASE WHEN :hold THEN pg_try_advisory_lock(:k1, :k2) ELSE false END AS held) "
    "SELECT new.id, x.job, o.id AS outbox_id, (SELECT held FROM h) AS held "
    "FROM new JOIN x ON x.fp = new.first_position LEFT JOIN o ON o.job = x.job ORDER BY new.id"
).bindparams(sa.bindparam("t", type_=sa.DateTime(timezone=True)))

_RELEASE_PG = sa.text(
    "WITH d AS (DELETE FROM esf_outbox WHERE id = ANY(CAST(:ids AS bigint[]))) SELECT pg_advisory_unlock(:k1, :k2)"
)


#: The jobs a tick sent while holding the relay's lock: ``(outbox id, payload)`` in outbox order.
Held = list[tuple[int, dict[str, Any]]]


def mark_sent(conn: Connection, rows: Sequence[Any], make_job: MakeJob, *,
              hold: bool) -> tuple[list[int], Held | None]:
    """Mark ``rows`` (batches with ``id``, ``positions``, ``correlation_id``) sent and put their jobs in the outbox.

    Parameters:
        hold: (PostgreSQL) also try to take the relay's lock for :func:`publish_held`.

    Returns:
        The outbox ids, and the jobs held for :func:`publish_held` (None when the lock was not taken).
    """
    now = datetime.now(UTC)
    payloads = [make_job(int(r.id), [int(p) for p in r.positions], r.correlation_id) for r in rows]
    if conn.dialect.name == "postgresql":
        k1, k2 = relay_lock_key(JOB_KIND)
        result = conn.execute(_MARK_SENT_PG, {
            "t": now, "kind": JOB_KIND, "payloads": json.dumps(payloads), "sent": SENT,
            "bids": [int(r.id) for r in rows], "jobs": [str(p["job_id"]) for p in payloads],
            "hold": hold, "k1": k1, "k2": k2}).all()
        by_job = {str(p["job_id"]): p for p in payloads}
        ids = [int(r.id) for r in result]
        held = [(int(r.id), by_job[r.job_id]) for r in result] if result and result[0].held else None
        return ids, held
    b = subscription_batches
    new = conn.execute(sa.insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True),
                       [{"created_at": now, "kind": JOB_KIND, "payload": p} for p in payloads]).scalars().all()
    conn.execute(sa.update(b).where(b.c.id == sa.bindparam("b_id"))
                 .values(state=SENT, job_id=sa.bindparam("b_job"), sent_at=now),
                 [{"b_id": int(r.id), "b_job": p["job_id"]} for r, p in zip(rows, payloads, strict=True)])
    return [int(i) for i in new], None


def write_fresh(conn: Connection, name: str, values: list[dict[str, Any]], *, room: int, make_job: MakeJob,
                cursor: int, moved: bool, hold: bool) -> tuple[list[int], Held | None]:
    """(PostgreSQL) Write a read's batches when none was queued or sent before it, in one statement.

    The batches that go are picked as :meth:`SqlSubscriptionBackend._send` picks fresh ones: in
    position order, none sharing a key with an earlier one, up to ``room``; the others are queued.

    Parameters:
        values: the new batches (``partition_keys``, ``first_position``, ``last_position``, ``positions``,
            ``correlation_id``), in position order.
        cursor: the cursor after the read; ``moved``: store it.
        hold: also try to take the relay's lock for :func:`publish_held`.

    Returns:
        The outbox ids, and the jobs held for :func:`publish_held` (None when the lock was not taken).
    """
    busy: set[str] = set()
    rows: list[dict[str, Any]] = []
    payloads: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(values):
        payload = None
        if len(payloads) < room and busy.isdisjoint(v["partition_keys"]):
            # The batch's id is not known yet: the statement puts it in the payload's args[0].
            payload = make_job(0, v["positions"], v["correlation_id"])
            payloads[str(payload["job_id"])] = payload
        busy.update(v["partition_keys"])
        rows.append({"i": i, "keys": v["partition_keys"], "fp": v["first_position"], "lp": v["last_position"],
                     "positions": v["positions"], "corr": v["correlation_id"], "send": payload is not None,
                     "job": None if payload is None else str(payload["job_id"]), "payload": payload})
    k1, k2 = relay_lock_key(JOB_KIND)
    result = conn.execute(_WRITE_FRESH_PG, {
        "batches": json.dumps(rows), "n": name, "sent": SENT, "queued": QUEUED, "t": datetime.now(UTC),
        "kind": JOB_KIND, "c": cursor, "moved": moved, "ckpt": min(cursor, values[0]["first_position"] - 1),
        "hold": hold and bool(payloads), "k1": k1, "k2": k2}).all()
    jobs: list[tuple[int, dict[str, Any]]] = []
    for r in result:
        if r.outbox_id is not None:
            payload = payloads[r.job]
            args = payload.get("args")
            if isinstance(args, list) and args:
                args[0] = int(r.id)
            jobs.append((int(r.outbox_id), payload))
    jobs.sort(key=lambda j: j[0])
    held = jobs if jobs and result[0].held else None
    return [i for i, _ in jobs], held


def publish_held(conn: Connection, held: Held, publish: Publish) -> list[int]:
    """After the tick's commit: publish the held jobs in order, delete their rows, release the relay's lock.

    Returns:
        The outbox ids left for a relay (those not published when ``publish`` raised, which propagates).
    """
    done: list[int] = []
    try:
        for outbox_id, payload in held:
            publish(payload)
            done.append(outbox_id)
    finally:
        k1, k2 = relay_lock_key(JOB_KIND)
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                _RELEASE_PG, {"ids": done, "k1": k1, "k2": k2})
        except Exception:
            # The lock must not outlive this call on a pooled connection: closing the session releases it.
            log.warning("subscriptions: releasing the outbox relay's lock failed; dropping the connection")
            conn.invalidate()
    return [i for i, _ in held[len(done):]]
