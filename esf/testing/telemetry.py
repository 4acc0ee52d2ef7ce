"""The contract suite of telemetry snapshot stores (where processes push metric deltas; see esf.telemetry).

Subclass :class:`SnapshotStoreContract` and implement ``create_store``; each
call returns a new store on the *same* data (as another process would open it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._base import ContractTestCase

if TYPE_CHECKING:
    from ..telemetry._aggregate import PushBatch
    from ..telemetry._store import SnapshotStore

__all__ = ["SnapshotStoreContract"]

META = {
    "c1": '{"k": "counter", "n": "t.c", "l": []}',
    "g1": '{"k": "gauge", "n": "t.g", "l": []}',
}


def batch(proc: str, seq: int, *, counters: dict[str, float] | None = None, gauges: dict[str, float] | None = None,
          meta: dict[str, str] | None = None, when: float | None = None, final: bool = False) -> PushBatch:
    """A push of process ``proc`` (its ``seq``-th)."""
    from ..telemetry._aggregate import PushBatch, window_start

    when = time.time() if when is None else when
    return PushBatch(proc=proc, seq=seq, time=when, window_start=window_start(when), meta=dict(meta or {}),
                     counters=dict(counters or {}), gauges=dict(gauges or {}), final=final)


class SnapshotStoreContract(ContractTestCase):
    """Batches applied atomically and once per ``(proc, seq)``; gauges live with their process."""

    def create_store(self) -> SnapshotStore:
        """A store on this test's data, empty at the first call; the suite closes it."""
        raise NotImplementedError

    def store(self) -> SnapshotStore:
        made = self.create_store()
        self.addCleanup(made.close)
        return made

    def test_an_empty_store_has_no_series_and_no_process(self) -> None:
        view = self.store().read(300)
        assert view.states == {} and view.processes == []

    def test_counters_add_up_across_processes_and_stores(self) -> None:
        a, b = self.store(), self.store()
        a.push(batch("p1", 1, counters={"c1": 5}, meta=META))
        b.push(batch("p2", 1, counters={"c1": 2}))
        assert a.read(300).states["c1"].value == 7 and b.read(300).states["c1"].value == 7

    def test_a_retried_batch_is_applied_once(self) -> None:
        store = self.store()
        first = batch("p1", 1, counters={"c1": 5}, meta=META)
        store.push(first)
        store.push(first)  # its reply was lost, say
        store.push(batch("p1", 2, counters={"c1": 1}))
        assert store.read(300).states["c1"].value == 6

    def test_gauges_are_per_process_and_vanish_when_their_process_closes(self) -> None:
        store = self.store()
        store.push(batch("p1", 1, gauges={"g1": 3}, meta=META))
        store.push(batch("p2", 1, gauges={"g1": 5}))
        view = store.read(300)
        assert sorted(view.states["g1"].gauge_values) == [3, 5] and sorted(view.processes) == ["p1", "p2"]
        store.push(batch("p2", 2, final=True))
        view = store.read(300)
        assert view.states["g1"].gauge_values == [3] and view.processes == ["p1"]

    def test_increments_land_in_the_window_bucket_of_their_push(self) -> None:
        store = self.store()
        now = time.time()
        store.push(batch("p1", 1, counters={"c1": 600}, meta=META, when=now - 240))
        store.push(batch("p1", 2, counters={"c1": 30}, when=now - 20))
        windows: dict[int, dict[str, Any]] = store.read(300).windows
        by_start = {start: series.get("c1", 0) for start, series in windows.items()}
        assert sorted(by_start.values()) == [30, 600]
        assert all(now - 300 <= start <= now for start in by_start)
