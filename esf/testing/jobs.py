"""The contract suites of the jobs service's backends: the coordinator and the schedule store.

Subclass and implement ``create_coordinator`` / ``create_store``; each call
returns a new object on the *same* data (as another process would open it)::

    from esf.testing import jobs

    class TestMyCoordinator(jobs.CoordinatorContract):
        def create_coordinator(self):
            return MyCoordinator(self.url)
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ._base import ContractTestCase

if TYPE_CHECKING:
    from ..jobs._coord import Coordinator
    from ..jobs._schedules import ScheduleStore

__all__ = ["CoordinatorContract", "ScheduleStoreContract"]

#: ``expected`` values of ``ScheduleStore.put`` (esf.jobs._schedules ABSENT / ANY).
ABSENT, ANY = 0, -1


def _closing(case: ContractTestCase, made: Any) -> Any:
    closer = getattr(made, "close", None)
    if callable(closer):
        case.addCleanup(closer)
    return made


class CoordinatorContract(ContractTestCase):
    """Atomic primitives shared by every process: claims, counters, token buckets, leases."""

    def create_coordinator(self) -> Coordinator:
        """A coordinator on this test's data, empty at the first call; the suite closes it."""
        raise NotImplementedError

    def coordinator(self) -> Coordinator:
        made: Coordinator = _closing(self, self.create_coordinator())
        return made

    def test_a_claim_is_taken_once_and_then_reports_the_holder(self) -> None:
        first, second = self.coordinator(), self.coordinator()
        assert first.claim("k", "a", ttl_s=30) is None
        assert second.claim("k", "b", ttl_s=30) == "a"
        assert second.get("k") == "a"
        second.delete("k")
        assert first.get("k") is None and first.claim("k", "c", ttl_s=30) is None

    def test_a_claim_expires_after_its_ttl(self) -> None:
        c = self.coordinator()
        assert c.claim("k", "a", ttl_s=0.2) is None
        self.eventually(lambda: c.get("k") is None, what="the claim's expiry")
        assert c.claim("k", "b", ttl_s=30) is None and c.get("k") == "b"

    def test_concurrent_claims_have_one_winner(self) -> None:
        winners: list[str] = []
        lock = threading.Lock()

        def contend(n: int) -> None:
            if self.coordinator().claim("race", f"w{n}", ttl_s=30) is None:
                with lock:
                    winners.append(f"w{n}")

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(winners) == 1 and self.coordinator().get("race") == winners[0]

    def test_counters_count_across_coordinators(self) -> None:
        a, b = self.coordinator(), self.coordinator()
        assert [a.incr("n", ttl_s=30), b.incr("n", ttl_s=30), a.incr("n", ttl_s=30)] == [1, 2, 3]

    def test_a_token_bucket_gives_its_burst_then_says_how_long_to_wait(self) -> None:
        c = self.coordinator()
        # A slow refill (one token per 100 s), so a loaded machine cannot refill the bucket between calls
        assert [c.take_token("bucket", rate_per_s=0.01, burst=2) for _ in range(2)] == [0, 0]
        wait = c.take_token("bucket", rate_per_s=0.01, burst=2)
        assert 0 < wait <= 100.0

    def test_a_lease_belongs_to_one_owner_until_released_or_expired(self) -> None:
        c = self.coordinator()
        assert c.acquire_lease("l", "a", ttl_s=30) and c.acquire_lease("l", "a", ttl_s=30)
        assert not c.acquire_lease("l", "b", ttl_s=30)
        c.release_lease("l", "b")  # not b's: nothing happens
        assert not c.acquire_lease("l", "b", ttl_s=30)
        c.release_lease("l", "a")
        assert c.acquire_lease("l", "b", ttl_s=0.2)
        self.eventually(lambda: c.acquire_lease("l", "a", ttl_s=30), what="the lease's expiry")


class ScheduleStoreContract(ContractTestCase):
    """Schedules with revisions: compare-and-set writes, run state guarded by the revision."""

    def create_store(self) -> ScheduleStore:
        """A schedule store on this test's data, empty at the first call; the suite closes it."""
        raise NotImplementedError

    def store(self) -> ScheduleStore:
        made: ScheduleStore = _closing(self, self.create_store())
        return made

    def _definition(self, every: float = 60.0) -> str:
        return json.dumps({"job": "t.job", "every_s": every, "id": uuid.uuid4().hex})

    def test_an_empty_store_holds_nothing(self) -> None:
        store = self.store()
        assert store.load() == [] and store.get("x") is None and store.delete("x") is False

    def test_a_put_of_a_new_schedule_is_read_back_by_another_store(self) -> None:
        writer, reader = self.store(), self.store()
        definition = self._definition()
        revision = writer.put("s", definition, ABSENT, (None, 100.0))
        assert revision > 0
        record = reader.get("s")
        assert record is not None and (record.definition, record.revision) == (definition, revision)
        assert (record.last_run_at, record.next_run_at) == (None, 100.0)
        assert [r.name for r in reader.load()] == ["s"]

    def test_a_put_on_a_stale_revision_is_refused_and_changes_nothing(self) -> None:
        store = self.store()
        first = store.put("s", self._definition(60), ABSENT, None)
        assert store.put("s", self._definition(30), ABSENT, None) == 0  # it exists already
        second = store.put("s", self._definition(10), first, None)
        assert second > first
        assert store.put("s", self._definition(5), first, None) == 0  # first is stale now
        record = store.get("s")
        assert record is not None and record.revision == second and json.loads(record.definition)["every_s"] == 10
        assert store.put("s", self._definition(1), ANY, None) > second

    def test_run_state_is_written_only_on_the_current_revision_and_kept_by_a_put_without_one(self) -> None:
        store = self.store()
        revision = store.put("s", self._definition(), ABSENT, None)
        assert store.record_run("s", revision, 1.0, 61.0)
        newer = store.put("s", self._definition(), revision, None)
        assert not store.record_run("s", revision, 2.0, 62.0)
        record = store.get("s")
        assert record is not None and (record.last_run_at, record.next_run_at) == (1.0, 61.0)
        assert store.record_run("s", newer, 3.0, 63.0)

    def test_a_deleted_schedule_is_gone(self) -> None:
        store = self.store()
        store.put("s", self._definition(), ABSENT, None)
        store.put("t", self._definition(), ABSENT, None)
        assert store.delete("s") is True
        assert store.get("s") is None and [r.name for r in store.load()] == ["t"]
