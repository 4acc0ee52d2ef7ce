"""A subscription tick's reading half: the statement that locks the subscription, and the cut into batches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ._schema import event_head, subscription_batches, subscriptions

QUEUED, SENT = "queued", "sent"


def lock_statement(name: str, *, wait: bool, counts: bool, dialect: str) -> Any:
    """The subscription's row, locked, with the store's head and (``counts``) its batches queued and sent."""
    head = sa.select(event_head.c.position).where(event_head.c.id == 1).scalar_subquery()
    columns: list[Any] = [subscriptions, head.label("head")]
    if counts:
        b = subscription_batches
        for state in (QUEUED, SENT):
            columns.append(sa.select(sa.func.count()).select_from(b).where(b.c.name == name, b.c.state == state)
                           .scalar_subquery().label(state))
    stmt = sa.select(*columns).where(subscriptions.c.name == name)
    if dialect == "postgresql":
        stmt = stmt.with_for_update(of=subscriptions, skip_locked=not wait)
    return stmt


def cut(rows: Sequence[Any], name: str, batch_size: int) -> list[dict[str, Any]]:
    """The rows of the batches ``rows`` (``(position, key, correlation_id)`` in position order) are cut into,
    as queued batches, in position order (not written)."""
    # One group per key (its positions, ascending), in the order of their first event. Whole groups
    # are packed into batches of up to batch_size events; a larger group is cut into chunks of its own
    # (which share that key and go one after the other). Other batches of one read share no key and
    # can run at once. Plain ints and tuples: a catch-up read is up to batch_size x max_in_flight rows.
    groups: dict[str, list[int]] = {}
    correlation: dict[int, str | None] = {}
    for position, k, correlation_id in rows:
        members = groups.get(k or "")
        if members is None:
            members = groups[k or ""] = []
        members.append(position)
        correlation[position] = correlation_id
    packs: list[tuple[list[str], list[int]]] = []
    keys: list[str] = []
    current: list[int] = []
    for k, members in groups.items():
        if len(members) >= batch_size:
            packs.extend(([k], members[i:i + batch_size]) for i in range(0, len(members), batch_size))
            continue
        if len(current) + len(members) > batch_size:
            packs.append((keys, current))
            keys, current = [], []
        keys.append(k)
        current.extend(members)
    if current:
        packs.append((keys, current))
    now = datetime.now(UTC)
    values: list[dict[str, Any]] = []
    for pack_keys, positions in packs:
        positions.sort()
        values.append({"name": name, "partition_keys": sorted(pack_keys), "first_position": positions[0],
                       "last_position": positions[-1], "positions": positions,
                       "correlation_id": correlation[positions[0]], "state": QUEUED, "job_id": None,
                       "created_at": now, "sent_at": None, "error": None, "failed_position": None})
    # Inserted in position order, so batch ids follow positions within each key.
    values.sort(key=lambda v: v["first_position"])
    return values
