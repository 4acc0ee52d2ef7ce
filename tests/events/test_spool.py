"""The durable local spool: PostgreSQL stopped while appending, started again, nothing lost, nothing doubled.

Runs a PRIVATE PostgreSQL (initdb + pg_ctl on a free port, as the postgres
user): the shared server is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf.errors import ServiceUnavailable, Timeout
from esf.events import Event
from esf.events._spool import Spool
from esf.events._validation import prepare_events
from tests.servers import unavailable

from .test_large_batches import N as LARGE
from .test_large_batches import large_batch

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next((str(b / name) for b in PG_BINS if (b / name).exists()), None)
    if not found:
        unavailable(f"{name} not installed")
    assert found is not None
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        cmd = list(argv) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data.parent} -c fsync=off"
        self._as_postgres(_pg_tool("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(_pg_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A throw-away PostgreSQL server owned by this test."""
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("no postgres user to run a private server")
    elif pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        unavailable("a private PostgreSQL needs root (runuser) or the postgres user")
    base = Path(tempfile.mkdtemp(prefix="esf-private-pg-"))
    if os.geteuid() == 0:
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    server = PrivatePostgres(base / "data", _free_port(), base / "server.log")
    try:
        server._as_postgres(_pg_tool("initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync")
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except Exception:  # already stopped
            pass
        shutil.rmtree(base, ignore_errors=True)


def _check_all_present_once_in_order(store: SqlEventStore, expected: dict[str, list[int]]) -> None:
    stored = store.read_all(limit=100_000)
    ids = [e.event_id for e in stored]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    for stream, numbers in expected.items():
        got = store.read_stream(stream)
        assert [e.data["i"] for e in got] == numbers, f"stream {stream} out of order or incomplete"
        assert [e.stream_version for e in got] == list(range(1, len(numbers) + 1))
    assert len(stored) == sum(len(v) for v in expected.values())


@pytest.mark.slow
def test_appends_while_postgresql_is_down_are_spooled_and_written_once_in_order(private_pg, tmp_path):
    # Given a store with a spool, and some events written while PostgreSQL runs
    store = SqlEventStore(private_pg.url, spool_path=tmp_path / "spool.sqlite", node="n1")
    expected: dict[str, list[int]] = {"s-0": [], "s-1": [], "s-2": []}
    counter = 0

    def append_round(n: int) -> list:
        nonlocal counter
        results = []
        for _ in range(n):
            stream = f"s-{counter % 3}"
            results.append(store.append([Event("tick.tock", {"i": counter}, stream_id=stream)]))
            expected[stream].append(counter)
            counter += 1
        return results

    try:
        direct = append_round(6)
        assert not any(r.is_pending for r in direct)
        # When PostgreSQL stops and more events are appended
        private_pg.stop()
        spooled = append_round(9)
        # Then each append returns a pending result (never a silent loss), and health says degraded
        assert all(r.is_pending and len(r) == 0 for r in spooled)
        health = store.health()
        assert health["status"] == "degraded" and health["spool_depth"] >= 1
        # And an append that needs the database (expected_version) fails loudly instead
        with pytest.raises(ServiceUnavailable):
            store.append(Event("tick.tock", {"i": -1}, stream_id="s-0"), expected_version=2)
        with pytest.raises(Timeout):
            spooled[0].wait(timeout=0.1)
        # When PostgreSQL is back
        private_pg.start()
        assert store.flush_spool(timeout=120)
        # Then every pending result resolves to its stored event
        for r in spooled:
            [e] = r.wait(timeout=60)
            assert e.position > 6
        # And more appends after recovery go straight to the database
        more = append_round(3)
        assert not any(r.is_pending for r in more)
        _check_all_present_once_in_order(store, expected)
        assert store.health()["status"] == "ok"
    finally:
        store.close()


@pytest.mark.slow
def test_events_spooled_by_a_process_that_stopped_are_written_by_the_next_one(private_pg, tmp_path):
    spool_path = tmp_path / "spool.sqlite"
    # Given a store that spooled events while PostgreSQL was down, then was closed
    first = SqlEventStore(private_pg.url, spool_path=spool_path)
    first.append(Event("a.b", {"i": 0}, stream_id="s"))
    private_pg.stop()
    pending = [first.append(Event("a.b", {"i": i}, stream_id="s")) for i in (1, 2, 3)]
    assert all(p.is_pending for p in pending)
    first.close()
    assert Spool(spool_path).depth() == 3
    # When PostgreSQL is back and a new store opens the same spool
    private_pg.start()
    second = SqlEventStore(private_pg.url, spool_path=spool_path)
    try:
        assert second.flush_spool(timeout=120)
        # Then the spooled events are written once, in order, after the first one
        _check_all_present_once_in_order(second, {"s": [0, 1, 2, 3]})
    finally:
        second.close()


@pytest.mark.slow
def test_a_spooled_batch_already_stored_by_a_crashed_flusher_is_not_doubled(private_pg, tmp_path):
    # Given a batch that a flusher wrote but could not remove from the spool (crash between the two)
    spool_path = tmp_path / "spool.sqlite"
    store = SqlEventStore(private_pg.url, spool_path=spool_path)
    try:
        prepared = prepare_events([Event("a.b", {"i": 0}, stream_id="s"), Event("a.b", {"i": 1}, stream_id="s")])
        store._write(prepared, None)
        Spool(spool_path).put(prepared)
        # When it is flushed again
        assert store.spooler is not None
        store.spooler._active = True
        assert store.flush_spool(timeout=60)
        # Then it is stored once
        _check_all_present_once_in_order(store, {"s": [0, 1]})
    finally:
        store.close()


def test_a_spooled_batch_whose_id_clashes_is_set_aside_not_dropped(store, tmp_path):
    # Given a stored event and a spooled batch reusing its id with other content
    [e] = store.append(Event("a.b", {"x": 1}))
    spool = Spool(tmp_path / "spool.sqlite")
    spool.put(prepare_events(Event("a.b", {"x": 2}, event_id=e.event_id)))
    spool.close()
    s2 = SqlEventStore(store.url, spool_path=tmp_path / "spool.sqlite", migrate=False)
    try:
        # When the spool is flushed
        assert s2.flush_spool(timeout=60)
        # Then the clashing batch is kept in the dead table and health shows it
        health = s2.health()
        assert health["spool_dead"] == 1 and health["status"] == "degraded"
        assert store.head() == 1
    finally:
        s2.close()


@pytest.mark.slow
def test_a_large_batch_while_postgresql_is_down_is_spooled_whole(private_pg, tmp_path):
    # Given a store with a spool on a PostgreSQL that then stops
    store = SqlEventStore(private_pg.url, spool_path=tmp_path / "spool.sqlite", node="n1")
    try:
        store.append(Event("big.first", {}))
        private_pg.stop()
        # When a large batch is appended
        events = large_batch()
        result = store.append(events)
        # Then the whole batch is pending, not lost and not partly written
        assert result.is_pending and len(result) == 0
        with pytest.raises(ServiceUnavailable):
            store.append(Event("big.batch", {}, stream_id="big-0"), expected_version=1)
        # When PostgreSQL is back
        private_pg.start()
        assert store.flush_spool(timeout=120)
        # Then every event is stored once, in order, with the data given
        written = result.wait(timeout=60)
        assert [e.data for e in written] == [e.data for e in events]
        assert [e.position for e in written] == list(range(2, LARGE + 2))
        assert store.head() == LARGE + 1
    finally:
        store.close()
