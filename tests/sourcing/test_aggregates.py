"""Aggregates: record, save, load, optimistic concurrency and retry, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading

import pytest

from esf.errors import ConcurrencyConflict, NotFound, SerializationError, ValidationError
from esf.foundation import Foundation

from .domain import Account


def test_a_saved_aggregate_loads_with_the_state_its_events_built(fnd: Foundation) -> None:
    # Given an account opened and credited twice, then saved
    account = Account("a1")
    account.open("ada")
    account.deposit(30)
    account.deposit(12)
    stored = fnd.aggregates.save(account)
    # Then its three events are in its stream, in order, and nothing is pending
    assert [e.event_type for e in stored] == ["account.opened", "account.deposited", "account.deposited"]
    assert [e.stream_version for e in stored] == [1, 2, 3]
    assert {e.stream_id for e in stored} == {"account-a1"}
    assert account.pending_events == ()
    # When it is loaded again
    loaded = fnd.aggregates.load(Account, "a1")
    # Then the state and version are those the events built
    assert (loaded.owner, loaded.balance, loaded.deposits, loaded.version) == ("ada", 42, 2, 3)


def test_loading_an_aggregate_without_events_raises_not_found(fnd: Foundation) -> None:
    with pytest.raises(NotFound):
        fnd.aggregates.load(Account, "nobody")


def test_recording_an_event_without_handler_raises_and_records_nothing(fnd: Foundation) -> None:
    # Given a new account
    account = Account("a2")
    account.open("bob")
    # When an event type without @applies handler is recorded
    with pytest.raises(ValidationError):
        account.record("account.closed", {})
    # Then nothing of it was applied nor kept
    assert account.version == 1
    assert [e.type for e in account.pending_events] == ["account.opened"]
    # And data that is not an object is refused too
    with pytest.raises(SerializationError):
        account.record("account.deposited", [1, 2])  # type: ignore[arg-type]
    assert account.version == 1


def test_a_stale_save_raises_concurrency_conflict_and_writes_nothing(fnd: Foundation) -> None:
    # Given an account saved at version 1 and two copies of it loaded
    account = Account("a3")
    account.open("cy")
    fnd.aggregates.save(account)
    first, second = fnd.aggregates.load(Account, "a3"), fnd.aggregates.load(Account, "a3")
    # When both change it and save: the first wins
    first.deposit(5)
    fnd.aggregates.save(first)
    second.deposit(7)
    second.deposit(8)
    with pytest.raises(ConcurrencyConflict) as caught:
        fnd.aggregates.save(second)
    # Then the loser's events were not written (all or nothing)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert fnd.aggregates.load(Account, "a3").balance == 5
    assert [e.stream_version for e in fnd.events.read_stream("account-a3")] == [1, 2]


def test_concurrent_saves_one_wins_the_other_retries_and_both_changes_are_kept(fnd: Foundation) -> None:
    # Given an account, and two threads that both load it before either saves
    account = Account("a4")
    account.open("dee")
    fnd.aggregates.save(account)
    both_loaded = threading.Barrier(2, timeout=30)
    attempts: list[int] = []
    lock = threading.Lock()

    def deposit(amount: int) -> None:
        calls = 0

        def change() -> None:
            nonlocal calls
            calls += 1
            acc = fnd.aggregates.load(Account, "a4")
            acc.deposit(amount)
            if calls == 1:
                both_loaded.wait()  # the first attempts of both threads saw the same version
            fnd.aggregates.save(acc)

        fnd.aggregates.retry(change, attempts=3)
        with lock:
            attempts.append(calls)

    # When both save their deposit through retry
    threads = [threading.Thread(target=deposit, args=(amount,)) for amount in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then one won at once and the other conflicted, reloaded and succeeded
    assert sorted(attempts) == [1, 2]
    final = fnd.aggregates.load(Account, "a4")
    assert (final.balance, final.deposits, final.version) == (30, 2, 3)


def test_retry_gives_up_after_its_attempts_with_the_last_conflict(fnd: Foundation) -> None:
    # Given a change that always conflicts
    calls = []

    def always_stale() -> None:
        calls.append(1)
        raise ConcurrencyConflict("stale", expected=1, actual=2)

    # When it is retried 4 times, Then the conflict propagates after exactly 4 calls
    with pytest.raises(ConcurrencyConflict):
        fnd.aggregates.retry(always_stale, attempts=4)
    assert len(calls) == 4
    # And a bad attempts count is refused before any call
    with pytest.raises(ValidationError):
        fnd.aggregates.retry(always_stale, attempts=0)
    assert len(calls) == 4
