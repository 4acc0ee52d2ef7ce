"""Upcasters on every read path, schema versions recorded at append, snapshots and schema bumps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

import esf
from esf.errors import SerializationError, ValidationError
from esf.events import Q, Query
from esf.foundation import Foundation
from esf.sourcing import SNAPSHOT_EVENT_TYPE, Aggregate, AggregateRepository, applies

from .domain import Account, SnapshottedAccount


def _v1_deposit(fnd: Foundation, stream: str, version: int, amount: int) -> None:
    # An event of the old shape, written before any upcaster existed.
    fnd.events.append(esf.Event("account.deposited", {"amount": amount}, stream_id=stream),
                      expected_version=version - 1)


def test_upcasters_turn_old_shapes_into_the_current_one_on_every_read_without_rewriting(fnd: Foundation) -> None:
    # Given deposits stored in shape v1 ({"amount": int, in euros})
    account = Account("u1")
    account.open("ada")
    fnd.aggregates.save(account)
    _v1_deposit(fnd, "account-u1", 2, 3)
    # When two upcasters are registered: v1 -> v2 (cents), v2 -> v3 (currency added)
    @fnd.upcaster("account.deposited", from_version=1)
    def _to_cents(data: dict[str, Any]) -> dict[str, Any]:
        return {"cents": data["amount"] * 100}

    @fnd.upcaster("account.deposited", from_version=2)
    def _with_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    # Then every read path returns the v3 shape, in chain order
    current = {"cents": 300, "currency": "EUR"}
    stored = fnd.events.read_stream("account-u1")[1]
    assert (stored.data, stored.metadata["schema_version"]) == (current, 3)
    assert fnd.events.get(stored.event_id).data == current
    assert fnd.events.get_many([stored.event_id])[0].data == current
    assert [e.data for e in fnd.events.read_all() if e.event_type == "account.deposited"] == [current]
    assert [e.data for e in fnd.events.query(Q.type("account.deposited"))] == [current]
    assert [e.data for e in fnd.events.query_page(Query(Q.type("account.deposited")), 10).events] == [current]
    # And the store itself still holds the v1 shape (nothing rewritten)
    raw = fnd.events.wrapped.read_stream("account-u1")[1]  # type: ignore[attr-defined]
    assert dict(raw.data) == {"amount": 3} and "schema_version" not in raw.metadata
    # And a new append records the current schema version, and is read as it was written
    fnd.events.append(esf.Event("account.deposited", {"cents": 50, "currency": "USD"}, stream_id="account-u1"))
    newest = fnd.events.wrapped.read_stream("account-u1", from_version=3)[0]  # type: ignore[attr-defined]
    assert newest.metadata["schema_version"] == 3
    assert fnd.events.read_stream("account-u1", from_version=3)[0].data == {"cents": 50, "currency": "USD"}


class CentsAccount(Aggregate):
    """The account after the v2 change: handlers read the current (upcast) shape only."""

    stream_prefix = "account"
    snapshot_every = 5
    schema_version = 2
    applied: ClassVar[int] = 0

    @applies("account.opened")
    def _opened(self, data: Mapping[str, Any]) -> None:
        type(self).applied += 1
        self.owner = data["owner"]
        self.cents = 0

    @applies("account.deposited")
    def _deposited(self, data: Mapping[str, Any]) -> None:
        type(self).applied += 1
        self.cents += data["cents"]


def test_a_load_uses_the_latest_snapshot_and_replays_only_the_events_after_it(fnd: Foundation) -> None:
    # Given an account snapshotted every 5 events, saved one event at a time up to version 12
    repo = AggregateRepository(fnd.events)  # snapshots written inline
    account = SnapshottedAccount("s1")
    account.open("ada")
    repo.save(account)
    for amount in range(1, 12):
        account.deposit(amount)
        repo.save(account)
    # Then snapshots were written when versions 5 and 10 were crossed
    snaps = fnd.events.read_stream("account-s1.snapshots")
    assert [(s.event_type, s.data["aggregate_version"]) for s in snaps] == [(SNAPSHOT_EVENT_TYPE, 5),
                                                                           (SNAPSHOT_EVENT_TYPE, 10)]
    # When it is loaded
    SnapshottedAccount.applied = 0
    loaded = repo.load(SnapshottedAccount, "s1")
    # Then only events 11 and 12 were replayed on top of the snapshot, and the state is whole
    assert SnapshottedAccount.applied == 2
    assert (loaded.owner, loaded.balance, loaded.deposits, loaded.version) == ("ada", 66, 11, 12)


def test_a_schema_bump_ignores_old_snapshots_and_rebuilds_through_the_upcasters(fnd: Foundation) -> None:
    # Given a v1 account with 12 events and schema-1 snapshots at 5 and 10
    repo = AggregateRepository(fnd.events)
    account = SnapshottedAccount("s2")
    account.open("bo")
    repo.save(account)
    for amount in range(1, 12):
        account.deposit(amount)
        repo.save(account)
    # When the deposit shape changes (upcaster v1 -> v2) and the class schema is bumped to 2
    fnd.upcaster("account.deposited", from_version=1)(lambda data: {"cents": data["amount"] * 100})
    CentsAccount.applied = 0
    loaded = repo.load(CentsAccount, "s2")
    # Then the schema-1 snapshot was ignored: all 12 events were replayed, through the upcaster
    assert CentsAccount.applied == 12
    assert (loaded.owner, loaded.cents, loaded.version) == ("bo", 6600, 12)
    # And once a schema-2 snapshot exists, it is used
    repo.snapshot(loaded)
    CentsAccount.applied = 0
    again = repo.load(CentsAccount, "s2")
    assert (CentsAccount.applied, again.cents, again.version) == (0, 6600, 12)
    # And a new deposit is stored at version 2 and replayed on top of the snapshot
    again.record("account.deposited", {"cents": 1})
    repo.save(again)
    CentsAccount.applied = 0
    assert repo.load(CentsAccount, "s2").cents == 6601
    assert CentsAccount.applied == 1


def test_upcasters_must_be_registered_in_order_once_and_return_objects(fnd: Foundation) -> None:
    # Given no upcaster yet: the first must read version 1
    with pytest.raises(ValidationError):
        fnd.upcaster("order.created", from_version=2)(lambda d: d)
    fnd.upcaster("order.created", from_version=1)(lambda d: d)
    # When the same version is registered again, Then it is refused
    with pytest.raises(ValidationError):
        fnd.upcaster("order.created", from_version=1)(lambda d: d)
    with pytest.raises(ValidationError):
        fnd.upcaster("not a type!", from_version=1)(lambda d: d)
    assert fnd.upcasters.current_version("order.created") == 2
    # And an upcaster that returns something else than an object fails the read, naming the type
    fnd.events.wrapped.append(esf.Event("thing.made", {"x": 1}))  # type: ignore[attr-defined]
    fnd.upcaster("thing.made", from_version=1)(lambda d: [d])
    with pytest.raises(SerializationError, match="thing.made"):
        fnd.events.query(Q.type("thing.made"))


def test_an_event_of_a_newer_schema_than_the_reader_knows_is_refused(fnd: Foundation) -> None:
    # Given an event written by a newer process (schema 5) and a reader that knows versions 1..2
    fnd.events.wrapped.append(  # type: ignore[attr-defined]
        esf.Event("thing.made", {"x": 1}, metadata={"schema_version": 5}))
    fnd.upcaster("thing.made", from_version=1)(lambda d: d)
    # When it is read, Then it is refused rather than misread
    with pytest.raises(ValidationError, match="schema version 5"):
        fnd.events.read_all()


def test_a_snapshot_that_cannot_be_dispatched_never_fails_the_save(fnd: Foundation) -> None:
    # Given a repository whose snapshot dispatch fails (the broker is down, say)
    def broken(payload: dict[str, Any]) -> None:
        raise ConnectionError("broker unreachable")

    repo = AggregateRepository(fnd.events, broken)
    account = SnapshottedAccount("s3")
    account.open("cy")
    for amount in range(1, 6):
        account.deposit(amount)
    # When a save crosses snapshot_every
    stored = repo.save(account)
    # Then the events are stored and the save returned normally; loads rebuild from the events
    assert len(stored) == 6 and account.pending_events == ()
    assert repo.load(SnapshottedAccount, "s3").balance == 15
    assert fnd.events.read_stream("account-s3.snapshots") == []


def test_an_aggregate_class_with_a_bad_snapshot_setting_is_refused_at_definition() -> None:
    with pytest.raises(ValidationError):
        class _Bad(Aggregate):
            snapshot_every = 0
