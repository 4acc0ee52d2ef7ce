"""The ConfigStore contract, run against every bundled store (SQLite and Redis)."""

from __future__ import annotations

import time

import pytest

from esf.config import Commit, HistoryEntry, NodeStatus
from esf.errors import ConcurrencyConflict


def _commit(base: int, document: dict, secrets: frozenset = frozenset()) -> Commit:
    entry = HistoryEntry(base + 1, time.time(), "t", "n", (), document, secrets=tuple(sorted(secrets)))
    return Commit(base, document, secrets, entry)


@pytest.fixture
def store(spec):
    s = spec.store()
    yield s
    s.close()


def test_an_empty_store_is_at_version_zero_with_an_empty_document(store):
    stored = store.read()
    assert (stored.version, dict(stored.document), stored.secrets) == (0, {}, frozenset())
    assert store.version() == 0 and store.history(10) == [] and store.entry(1) is None


def test_a_commit_bumps_the_version_by_one_and_records_its_entry(store):
    assert store.commit(_commit(0, {"a": 1}, frozenset({"s"}))) == 1
    stored = store.read()
    assert stored.version == 1 and stored.document == {"a": 1} and stored.secrets == {"s"}
    assert store.entry(1).document == {"a": 1} and store.entry(1).secrets == ("s",)


def test_a_commit_on_a_stale_base_is_a_conflict_and_changes_nothing(store):
    store.commit(_commit(0, {"a": 1}))
    with pytest.raises(ConcurrencyConflict) as info:
        store.commit(_commit(0, {"a": 2}))
    assert info.value.actual == 1
    assert store.read().document == {"a": 1} and store.version() == 1


def test_history_is_newest_first_and_bounded(spec):
    from .conftest import FAST

    store = spec.store(FAST.__class__(**{**FAST.__dict__, "history_limit": 2}))
    try:
        for v in range(4):
            store.commit(_commit(v, {"v": v}))
        assert [e.version for e in store.history(10)] == [4, 3]
        assert store.entry(2) is None
    finally:
        store.close()


def test_notifications_carry_new_versions(spec, store):
    from .conftest import eventually

    seen = []
    store.watch(seen.append)
    writer = spec.store()
    try:
        eventually(lambda: seen, what="first (re)connect notification")
        writer.commit(_commit(0, {"a": 1}))
        eventually(lambda: 1 in seen, what="notification of version 1")
    finally:
        writer.close()


def test_heartbeats_expire_and_can_be_forgotten(store):
    # Given two nodes that beat, one of which then stops beating
    def beat(node_id: str, ttl_s: float) -> None:
        now = time.time()
        store.beat(NodeStatus(node_id, "h", 1, 3, now, now), ttl_s=ttl_s)

    beat("n1", 0.5)
    beat("n2", 0.5)
    assert [n.node_id for n in store.nodes(ttl_s=0.5)] == ["n1", "n2"]
    # Then the silent one expires while the other, still beating, stays
    deadline = time.monotonic() + 30
    while [n.node_id for n in store.nodes(ttl_s=0.5)] != ["n1"]:
        assert time.monotonic() < deadline, "the silent node's heartbeat never expired"
        beat("n1", 0.5)
        time.sleep(0.05)
    # And a forgotten node is gone at once
    store.forget("n1")
    assert store.nodes(ttl_s=0.5) == []
