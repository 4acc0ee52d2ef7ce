"""Retention: prune old events, never the latest of a stream, never beyond the lowest checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events._schema import checkpoints, events

from esf.errors import ValidationError
from esf.events import Event


def _age_all(store, days: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.update(events).values(recorded_at=datetime.now(UTC) - timedelta(days=days)))


def test_prune_deletes_old_events_but_keeps_the_latest_of_each_stream(store):
    # Given 3 events in stream a, 2 in stream b, all 100 days old
    store.append([Event("x.a", stream_id="a"), Event("x.a", stream_id="a"), Event("x.a", stream_id="a")])
    store.append([Event("x.b", stream_id="b"), Event("x.b", stream_id="b")])
    _age_all(store, 100)
    # When events older than 90 days are pruned
    deleted = store.prune(older_than=timedelta(days=90))
    # Then all but the latest of each stream are gone, and streams keep their versions
    assert deleted == 3
    assert [(e.stream_id, e.stream_version) for e in store.read_all()] == [("a", 3), ("b", 2)]
    [e] = store.append(Event("x.a", stream_id="a"), expected_version=3)
    assert (e.stream_version, e.position) == (4, 6)


def test_prune_keeps_recent_events_and_filters_by_type(store):
    store.append([Event("keep.me", stream_id="s"), Event("drop.me", stream_id="s"), Event("keep.me", stream_id="s")])
    assert store.prune(older_than=timedelta(days=1)) == 0
    _age_all(store, 10)
    assert store.prune(older_than=timedelta(days=1), types=["drop.me"]) == 1
    assert [e.event_type for e in store.read_all()] == ["keep.me", "keep.me"]


def test_prune_never_deletes_events_a_subscription_has_not_processed(store):
    # Given 5 old events in one stream and a subscription checkpointed at position 2
    store.append([Event("x.a", stream_id="s") for _ in range(5)])
    _age_all(store, 100)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(checkpoints).values(name="sub-1", position=2, updated_at=datetime.now(UTC)))
    # When pruning
    assert store.prune(older_than=timedelta(days=1)) == 2
    # Then only positions up to the checkpoint were deleted
    assert [e.position for e in store.read_all()] == [3, 4, 5]


def test_prune_arguments_are_validated(store):
    with pytest.raises(ValidationError):
        store.prune(older_than=timedelta(days=-1))
    with pytest.raises(ValidationError):
        store.prune(older_than=timedelta(days=1), types=["bad type"])
    assert store.prune(older_than=timedelta(days=1), types=[]) == 0
