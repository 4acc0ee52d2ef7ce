"""Concurrent writers: optimistic concurrency and gap-free, commit-ordered positions (threads and processes)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import threading
import uuid

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore
from sqlalchemy.orm import Session

from esf.errors import ConcurrencyConflict
from esf.events import Event

ROUNDS = 5


def _race_rounds(url: str, name: str, barrier, rounds: int, out) -> None:
    """Each round: everybody reads the version, then everybody appends with it; report the outcomes."""
    store = SqlEventStore(url, migrate=False)
    wins = conflicts = 0
    try:
        for _ in range(rounds):
            barrier.wait()
            version = store.stream_version("account-1")
            barrier.wait()
            try:
                store.append(Event("account.debited", {"by": name}, stream_id="account-1"), expected_version=version)
                wins += 1
            except ConcurrencyConflict as exc:
                assert exc.actual == version + 1
                conflicts += 1
    finally:
        store.close()
    out.put((name, wins, conflicts))


def _writer(url: str, seed: int, batches: int, out) -> None:
    """Append random batches, some in slow transactions and some rolled back; report the committed ids."""
    rng = random.Random(seed)
    store = SqlEventStore(url, migrate=False)
    committed: list[str] = []
    try:
        for i in range(batches):
            events = [
                Event("load.tick", {"w": seed, "i": i, "j": j}, stream_id=f"s-{rng.randrange(4)}")
                for j in range(rng.randint(1, 5))
            ]
            mode = rng.random()
            if mode < 0.2:
                with Session(store.engine) as session:
                    store.append(events, session=session)
                    session.rollback()  # holds the head lock, then gives nothing back
            elif mode < 0.35:
                with Session(store.engine) as session:
                    result = store.append(events, session=session)
                    threading.Event().wait(0.02)  # a slow transaction
                    session.commit()
                committed += [e.event_id for e in result]
            else:
                committed += [e.event_id for e in store.append(events)]
    finally:
        store.close()
    out.put(committed)


def test_writers_racing_on_one_expected_version_let_exactly_one_win_per_round_threads(store):
    # Given 4 threads that, each round, read the same version and then append with it
    barrier = threading.Barrier(4)
    out: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_race_rounds, args=(store.url, f"t{i}", barrier, ROUNDS, out)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    results = [out.get_nowait() for _ in threads]
    # Then exactly one append wins each round and the others get ConcurrencyConflict
    assert sum(w for _, w, _ in results) == ROUNDS
    assert sum(c for _, _, c in results) == ROUNDS * 3
    assert [e.stream_version for e in store.read_stream("account-1")] == list(range(1, ROUNDS + 1))


@pytest.mark.slow
def test_writers_racing_on_one_expected_version_let_exactly_one_win_per_round_processes(store):
    # Given 3 spawned processes racing the same way
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    out = ctx.Queue()
    procs = [ctx.Process(target=_race_rounds, args=(store.url, f"p{i}", barrier, ROUNDS, out)) for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # Then one winner per round, the rest conflicts, and versions without holes
    assert sum(w for _, w, _ in results) == ROUNDS
    assert sum(c for _, _, c in results) == ROUNDS * 2
    assert [e.stream_version for e in store.read_stream("account-1")] == list(range(1, ROUNDS + 1))


@pytest.mark.slow
def test_a_tailing_reader_never_sees_a_gap_filled_later_with_writers_in_three_processes(store):
    # Given 3 writer processes appending batches, some in slow or rolled-back transactions
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store.url, seed, 40, out)) for seed in range(3)]
    for p in procs:
        p.start()
    # And a reader that tails read_all() from its last position while they write
    delivered: list[int] = []
    ids: list[str] = []
    gaps: list[tuple[int, int]] = []
    done = threading.Event()

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()  # read once more after the writers finished
            for e in store.read_all(after_position=last, limit=50):
                if e.position != last + 1:
                    gaps.append((last, e.position))
                last = e.position
                delivered.append(e.position)
                ids.append(e.event_id)
            if finished and last == store.head():
                return

    reader = threading.Thread(target=tail)
    reader.start()
    committed = [eid for _ in procs for eid in out.get(timeout=240)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    done.set()
    reader.join(timeout=120)
    # Then the reader saw every position exactly once, in order, with no gap it had to skip
    assert gaps == []
    assert delivered == list(range(1, store.head() + 1))
    # And what it saw is exactly what the writers committed (rolled-back batches left no trace)
    assert sorted(ids) == sorted(committed)
    assert len(set(committed)) == len(committed)


def test_a_rolled_back_session_append_leaves_no_gap(store):
    with Session(store.engine) as session:
        store.append([Event("a.b"), Event("a.c")], session=session)
        session.rollback()
    [e] = store.append(Event("a.d", event_id=str(uuid.uuid4())))
    assert e.position == 1
