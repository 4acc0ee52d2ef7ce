"""The contract suites of event stores, one per capability tier.

A backend subclasses the suite of the highest tier it implements (each suite
includes the ones below it) and implements ``create_store``::

    from esf.testing import events

    class TestMyRecorder(events.EventRecorderContract):
        def create_store(self):
            return MyRecorder()

========================================  ==========================================
Suite                                     Tier (``esf.events``)
========================================  ==========================================
:class:`EventRecorderContract`            :class:`~esf.events.EventRecorder`
:class:`QueryableEventStoreContract`      :class:`~esf.events.QueryableEventStore`
:class:`TransactionalEventStoreContract`  :class:`~esf.events.TransactionalEventStore`
========================================  ==========================================
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ConcurrencyConflict, DuplicateEventId, NotFound, ValidationError
from ..events import Event, EventRecorder, Q, QueryableEventStore, TransactionalEventStore
from ._base import ContractTestCase

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session

__all__ = ["EventRecorderContract", "QueryableEventStoreContract", "TransactionalEventStoreContract"]


class EventRecorderContract(ContractTestCase):
    """The base tier: atomic, idempotent appends with gap-free positions, and the reads."""

    #: The tier the store must declare (``isinstance`` on the runtime-checkable Protocol).
    tier: type[Any] = EventRecorder

    def create_store(self) -> Any:
        """A store on fresh, empty storage; the suite closes it after the test."""
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.store = self.create_store()
        self.addCleanup(self.store.close)

    def test_the_store_declares_its_tier(self) -> None:
        assert isinstance(self.store, self.tier), f"{type(self.store).__name__} lacks a method of {self.tier.__name__}"

    def test_an_empty_store_is_at_head_zero(self) -> None:
        assert self.store.head() == 0
        assert self.store.read_all() == []
        assert self.store.read_stream("nothing-here") == []

    def test_an_append_stores_the_event_at_position_one_version_one(self) -> None:
        [stored] = self.store.append(Event("order.created", {"n": 1}, stream_id="order-1", correlation_id="c-1"))
        assert (stored.position, stored.stream_version, stored.stream_id) == (1, 1, "order-1")
        assert (stored.event_type, stored.data, stored.correlation_id) == ("order.created", {"n": 1}, "c-1")
        assert self.store.get(stored.event_id) == stored
        assert self.store.read_stream("order-1") == [stored]
        assert self.store.read_all() == [stored]
        assert self.store.head() == 1

    def test_positions_are_global_and_versions_per_stream(self) -> None:
        stored = self.store.append([Event("a.b", {"i": i}, stream_id=f"s-{i % 2}") for i in range(5)])
        assert [e.position for e in stored] == [1, 2, 3, 4, 5]
        assert [e.stream_version for e in stored] == [1, 1, 2, 2, 3]
        assert [e.data["i"] for e in self.store.read_stream("s-0")] == [0, 2, 4]
        assert [e.stream_version for e in self.store.read_stream("s-0", from_version=2, limit=1)] == [2]

    def test_read_all_pages_by_position_without_gaps(self) -> None:
        self.store.append([Event("a.b", {"i": i}) for i in range(7)])
        seen: list[int] = []
        after = 0
        while page := self.store.read_all(after_position=after, limit=3):
            seen += [e.position for e in page]
            after = page[-1].position
        assert seen == list(range(1, 8))

    def test_the_same_event_appended_again_is_stored_once(self) -> None:
        event = Event("a.b", {"x": 1}, event_id=str(uuid.uuid4()))
        [first] = self.store.append(event)
        again = self.store.append(event)
        assert list(again) == [first] and again.already_stored == {first.event_id}
        assert self.store.head() == 1

    def test_an_id_stored_with_other_content_is_refused_and_the_batch_is_not_stored(self) -> None:
        event_id = str(uuid.uuid4())
        self.store.append(Event("a.b", {"x": 1}, event_id=event_id))
        with self.assertRaises(DuplicateEventId):
            self.store.append([Event("a.c"), Event("a.b", {"x": 2}, event_id=event_id)])
        assert self.store.head() == 1

    def test_expected_version_guards_a_stream_and_a_conflict_stores_nothing(self) -> None:
        self.store.append(Event("a.b", stream_id="s"), expected_version=0)
        self.store.append(Event("a.b", stream_id="s"), expected_version=1)
        with self.assertRaises(ConcurrencyConflict) as info:
            self.store.append([Event("a.b", stream_id="s"), Event("a.b", stream_id="s")], expected_version=1)
        assert (info.exception.expected, info.exception.actual) == (1, 2)
        assert self.store.head() == 2 and len(self.store.read_stream("s")) == 2

    def test_bad_input_is_refused_before_anything_is_stored(self) -> None:
        bad_calls: tuple[Callable[[], object], ...] = (
                    lambda: self.store.append([]), lambda: self.store.append(Event("Not A Type")),
                    lambda: self.store.append(Event("a.b", event_id="not-a-uuid")),
                    lambda: self.store.read_all(limit=0), lambda: self.store.read_all(after_position=-1),
                    lambda: self.store.get("not-a-uuid"))
        for bad in bad_calls:
            with self.assertRaises(ValidationError):
                bad()
        assert self.store.head() == 0

    def test_an_unknown_id_is_not_found(self) -> None:
        with self.assertRaises(NotFound):
            self.store.get(str(uuid.uuid4()))

    def test_concurrent_appends_get_gap_free_positions_and_versions(self) -> None:
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(10):
                    self.store.append([Event("a.b", {"w": n, "i": i}, stream_id="shared"), Event("a.c")])
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        everything = self.store.read_all(limit=1000)
        assert [e.position for e in everything] == list(range(1, 81))
        assert [e.stream_version for e in self.store.read_stream("shared")] == list(range(1, 41))


class QueryableEventStoreContract(EventRecorderContract):
    """The queryable tier: ``esf.Q`` queries, pages, counts, aggregates, sequences, correlations."""

    tier = QueryableEventStore

    def _orders(self) -> list[Any]:
        return list(self.store.append([
            Event("order.created", {"amount": 10, "status": "new"}, correlation_id="c-1"),
            Event("order.paid", {"amount": 10}, correlation_id="c-1"),
            Event("order.created", {"amount": 5, "status": "new"}, correlation_id="c-2"),
            Event("user.signup", {"name": "ada"}),
        ]))

    def test_a_query_returns_the_matching_events_by_position(self) -> None:
        created, _, other, _ = self._orders()
        assert self.store.query(Q.type("order.created")) == [created, other]
        assert self.store.query(Q.data("amount") > 7) == [created, self.store.get(self._paid_id())]

    def _paid_id(self) -> str:
        return str(self.store.query(Q.type("order.paid"))[0].event_id)

    def test_pages_follow_their_cursor_to_the_end(self) -> None:
        stored = self._orders()
        page = self.store.query_page(None, 3)
        assert list(page.events) == stored[:3] and page.next_cursor is not None
        rest = self.store.query_page(None, 3, page.next_cursor)
        assert list(rest.events) == stored[3:] and rest.next_cursor is None

    def test_counts_and_aggregates_cover_the_matching_events(self) -> None:
        self._orders()
        assert self.store.count(Q.type("order.created")) == 2
        assert self.store.count(by="event_type") == {"order.created": 2, "order.paid": 1, "user.signup": 1}
        assert self.store.aggregate("sum", "data.amount", Q.types("order.created", "order.paid")) == 25

    def test_correlations_and_lookups_by_id(self) -> None:
        created, paid, other, _ = self._orders()
        assert self.store.read_correlation("c-1") == [created, paid]
        assert self.store.get_many([other.event_id, created.event_id]) == [other, created]
        with self.assertRaises(NotFound):
            self.store.get_many([created.event_id, str(uuid.uuid4())])

    def test_sequences_pair_an_event_with_its_follower(self) -> None:
        created, paid, _, _ = self._orders()
        pairs = self.store.followed_by(Q.type("order.created"), Q.type("order.paid"), within=timedelta(hours=1))
        assert pairs == [(created, paid)]


class TransactionalEventStoreContract(QueryableEventStoreContract):
    """The full tier: appends in the caller's transaction, the idempotency ledger, the outbox, retention."""

    tier = TransactionalEventStore

    def create_session(self) -> Session:
        """A session of the caller's own database transaction (default: SQLAlchemy on ``store.engine``)."""
        from sqlalchemy.orm import Session

        return Session(self.store.engine)

    def outbox_put(self, session: Session, kind: str, payload: dict[str, Any]) -> None:
        """Write an outbox row in ``session``'s transaction (default: ESF's SQL outbox table)."""
        from esf.plugins.sqlalchemy_events import outbox_put

        outbox_put(session, kind, payload)

    def test_an_append_in_a_session_is_stored_by_its_commit_and_discarded_by_its_rollback(self) -> None:
        self.store.head()  # the backend's migrations run before the caller's transaction
        with self.create_session() as s:
            self.store.append(Event("a.rolled_back"), session=s)
            s.rollback()
        assert self.store.head() == 0
        with self.create_session() as s:
            [stored] = self.store.append(Event("a.committed"), session=s)
            s.commit()
        assert self.store.read_all() == [stored]

    def test_the_ledger_records_a_key_once_and_only_when_its_transaction_commits(self) -> None:
        self.store.head()
        with self.create_session() as s:
            with self.store.once("charge:1", session=s) as first:
                assert first
            s.rollback()
        with self.create_session() as s:
            with self.store.once("charge:1", session=s) as first:
                assert first
            s.commit()
        with self.create_session() as s, self.store.once("charge:1", session=s) as first:
            assert not first

    def test_the_outbox_relays_committed_rows_of_its_kind_in_order_and_keeps_the_others(self) -> None:
        self.store.head()
        with self.create_session() as s:
            self.outbox_put(s, "job", {"n": 1})
            self.outbox_put(s, "mail", {"n": 2})
            self.outbox_put(s, "job", {"n": 3})
            s.commit()
        with self.create_session() as s:
            self.outbox_put(s, "job", {"n": 4})
            s.rollback()
        sent: list[tuple[str, dict[str, Any]]] = []
        assert self.store.outbox_relay(lambda k, p: sent.append((k, p)), kind="job").drain() == 2
        assert sent == [("job", {"n": 1}), ("job", {"n": 3})]
        assert self.store.outbox_relay(lambda k, p: sent.append((k, p)), kind="mail").drain() == 1

    def test_pruning_keeps_the_latest_event_of_every_stream(self) -> None:
        self.store.append([Event("a.b", stream_id="s") for _ in range(3)])
        assert self.store.prune(older_than=timedelta(0)) == 2
        assert [e.stream_version for e in self.store.read_stream("s")] == [3]
        with self.assertRaises(ValidationError):
            self.store.prune(older_than=timedelta(seconds=-1))

    def test_health_reports_ok(self) -> None:
        assert self.store.health()["status"] == "ok"
