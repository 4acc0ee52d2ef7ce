"""The contract suite of configuration stores (:class:`esf.config.ConfigStore`).

Subclass :class:`ConfigStoreContract` and implement :meth:`~ConfigStoreContract.create_store`::

    from esf.testing import config

    class TestMyConfigStore(config.ConfigStoreContract):
        def create_store(self, *, history_limit=1000):
            return MyConfigStore(self.url, history_limit=history_limit)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import ConcurrencyConflict
from ._base import ContractTestCase

if TYPE_CHECKING:
    from ..config import ConfigStore

__all__ = ["ConfigStoreContract"]


def _commit(base: int, document: dict[str, Any], secrets: frozenset[str] = frozenset()) -> Any:
    from ..config import Commit, HistoryEntry

    entry = HistoryEntry(base + 1, time.time(), "t", "n", (), document, secrets=tuple(sorted(secrets)))
    return Commit(base, document, secrets, entry)


class ConfigStoreContract(ContractTestCase):
    """What every configuration store promises: versioned atomic commits, history, notifications, heartbeats."""

    def create_store(self, *, history_limit: int = 1000) -> ConfigStore:
        """A store on this test's source of truth, empty at the first call.

        Each call returns a new store object on the *same* data (as another
        process would open it); the suite closes every store it creates.
        """
        raise NotImplementedError

    def store(self, **kwargs: Any) -> ConfigStore:
        made = self.create_store(**kwargs)
        self.addCleanup(made.close)
        return made

    def test_an_empty_store_is_at_version_zero_with_an_empty_document(self) -> None:
        store = self.store()
        stored = store.read()
        assert (stored.version, dict(stored.document), stored.secrets) == (0, {}, frozenset())
        assert store.version() == 0 and store.history(10) == [] and store.entry(1) is None

    def test_a_commit_bumps_the_version_by_one_and_records_its_entry(self) -> None:
        store = self.store()
        assert store.commit(_commit(0, {"a": 1}, frozenset({"s"}))) == 1
        stored = store.read()
        assert stored.version == 1 and stored.document == {"a": 1} and stored.secrets == {"s"}
        entry = store.entry(1)
        assert entry is not None and entry.document == {"a": 1} and entry.secrets == ("s",)

    def test_a_commit_on_a_stale_base_is_a_conflict_and_changes_nothing(self) -> None:
        store = self.store()
        store.commit(_commit(0, {"a": 1}))
        with self.assertRaises(ConcurrencyConflict) as info:
            store.commit(_commit(0, {"a": 2}))
        assert info.exception.actual == 1
        assert store.read().document == {"a": 1} and store.version() == 1

    def test_a_second_store_on_the_same_data_sees_the_commits(self) -> None:
        writer, reader = self.store(), self.store()
        writer.commit(_commit(0, {"a": 1}))
        assert reader.version() == 1 and reader.read().document == {"a": 1}

    def test_history_is_newest_first_and_bounded(self) -> None:
        store = self.store(history_limit=2)
        for v in range(4):
            store.commit(_commit(v, {"v": v}))
        assert [e.version for e in store.history(10)] == [4, 3]
        assert store.entry(2) is None

    def test_notifications_carry_new_versions(self) -> None:
        store = self.store()
        seen: list[int | None] = []
        store.watch(seen.append)
        writer = self.store()
        self.eventually(lambda: seen, what="first (re)connect notification")
        writer.commit(_commit(0, {"a": 1}))
        self.eventually(lambda: 1 in seen, what="notification of version 1")

    def test_heartbeats_expire_and_can_be_forgotten(self) -> None:
        from ..config import NodeStatus

        store = self.store()

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
