"""The spool's quarantine: an entry PostgreSQL keeps refusing is set aside, the rest is written in order,
and the CLI lists and retries it. Also: a pool timeout and the COPY path spool like an unreachable server."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf.cli._events import run_spool_list, run_spool_retry
from esf.errors import SpoolQuarantined
from esf.events import Event
from esf.events._validation import prepare_events

from .test_large_batches import N as LARGE
from .test_large_batches import large_batch

REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_type = 'poison.pill' THEN
    RAISE EXCEPTION 'poison pills are refused here';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON esf_events FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def test_an_entry_the_database_keeps_refusing_is_quarantined_and_the_rest_is_written_in_order(
    pg_url: str, tmp_path: Path
) -> None:
    store = SqlEventStore(pg_url, spool_path=tmp_path / "spool.sqlite", spool_max_attempts=3)
    assert store.spooler is not None
    try:
        # Given a database that refuses one event type (a trigger raises), with PostgreSQL reachable
        with store.engine.begin() as conn:
            conn.execute(sa.text(REFUSE_POISON))
        # When four appends are spooled, the second of them refused
        events = [Event("ok.first", {"i": 0}, stream_id="s"), Event("poison.pill", {"i": 1}, stream_id="p"),
                  Event("ok.second", {"i": 2}, stream_id="s"), Event("ok.third", {"i": 3}, stream_id="s")]
        pending = [store.spooler.put(prepare_events(e)) for e in events]
        assert store.flush_spool(timeout=60)
        # Then the refused entry is in the quarantine with its attempts and the database's reason
        [entry] = store.spool_quarantine()
        assert entry.id == pending[1].pending.spool_id
        assert entry.attempts == 3 and entry.n_events == 1 and entry.streams == ("p",)
        assert "poison pills are refused here" in entry.error
        # And the entries after it were written, in order; its own waiter gets the specific error
        assert [e.event_type for e in store.read_all()] == ["ok.first", "ok.second", "ok.third"]
        for result in (pending[0], pending[2], pending[3]):
            assert len(result.wait(timeout=30)) == 1
        with pytest.raises(SpoolQuarantined, match="esf events spool retry"):
            pending[1].wait(timeout=30)
        # And health reports it
        health = store.health()
        assert health["spool_quarantined"] == 1 and health["status"] == "degraded"
        # And the CLI lists it (exit status 1 while there is one)
        out = io.StringIO()
        assert run_spool_list(store, out=out) == 1
        assert f"entry {entry.id}  1 event(s)  streams p  3 attempt(s)" in out.getvalue()
        # When the cause is fixed and the entry retried
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_poison ON esf_events"))
        out = io.StringIO()
        assert run_spool_retry(store, [entry.id], wait_s=60, out=out) == 0
        # Then it is written, the quarantine is empty and health is ok
        assert f"entry {entry.id}: written" in out.getvalue()
        assert [e.event_type for e in store.read_all()][-1] == "poison.pill"
        assert store.spool_quarantine() == [] and store.health()["status"] == "ok"
    finally:
        store.close()


def test_a_retried_entry_refused_again_goes_back_to_the_quarantine(pg_url: str, tmp_path: Path) -> None:
    store = SqlEventStore(pg_url, spool_path=tmp_path / "spool.sqlite", spool_max_attempts=2)
    assert store.spooler is not None
    try:
        # Given a quarantined entry whose cause is not fixed
        with store.engine.begin() as conn:
            conn.execute(sa.text(REFUSE_POISON))
        store.spooler.put(prepare_events(Event("poison.pill", {}, stream_id="p")))
        assert store.flush_spool(timeout=60)
        [entry] = store.spool_quarantine()
        # When it is retried, then the CLI says it was quarantined again and exits 1; nothing is lost
        out = io.StringIO()
        assert run_spool_retry(store, None, wait_s=60, out=out) == 1
        assert f"entry {entry.id}: quarantined again" in out.getvalue()
        assert [e.id for e in store.spool_quarantine()] == [entry.id]
        # And an unknown id is reported, not ignored silently
        assert run_spool_retry(store, [entry.id + 1000], wait_s=1, out=io.StringIO()) == 1
    finally:
        store.close()


def test_a_pool_timeout_spools_appends_and_large_batches_like_an_unreachable_server(
    pg_url: str, tmp_path: Path
) -> None:
    # Given a store whose only pooled connection is held elsewhere (the pool waits 0.5 s, then times out)
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              pool_size=1, max_overflow=0, pool_timeout=0.5)
    store = SqlEventStore(pg_url, engine=engine, spool_path=tmp_path / "spool.sqlite")
    try:
        store.head()  # migrations, while the connection is free
        held = engine.connect()
        try:
            # When a large batch (the COPY path) and then one event are appended
            batch = large_batch()
            big = store.append(batch)
            one = store.append(Event("after.batch", {}, stream_id="s"))
            # Then both are spooled (pending), not raised
            assert big.is_pending and one.is_pending
        finally:
            held.close()
        # And once a connection is free, both are written in order
        assert store.flush_spool(timeout=60)
        written = big.wait(timeout=30)
        assert [e.data for e in written] == [e.data for e in batch]
        [after] = one.wait(timeout=30)
        assert after.position == LARGE + 1
    finally:
        store.close()
        engine.dispose()



DISK_FULL = """
CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER disk_full BEFORE INSERT ON esf_events FOR EACH ROW EXECUTE FUNCTION disk_full();
"""


def test_a_full_disk_spools_appends_and_never_quarantines_them(pg_url: str, tmp_path: Path) -> None:
    # Given a database that answers every insert with SQLSTATE 53100 (disk full), and a spool that would
    # quarantine an entry at its first refusal
    store = SqlEventStore(pg_url, spool_path=tmp_path / "spool.sqlite", spool_max_attempts=1)
    try:
        with store.engine.begin() as conn:
            conn.execute(sa.text(DISK_FULL))
        # When an event is appended, then it is spooled (pending) like on an unreachable server, not raised
        result = store.append(Event("a.b", {"i": 1}, stream_id="s"))
        assert result.is_pending
        # And the flusher's failures count as "unreachable" (they open the circuit), never as refusals:
        # after several of them nothing is quarantined and the event still waits in the spool
        deadline = time.monotonic() + 60
        while store.breaker.state == "closed":
            assert time.monotonic() < deadline, "the flusher never failed three times"
            time.sleep(0.05)
        assert store.spool_quarantine() == [] and store.health()["spool_depth"] == 1
        # When space is back, then the event is written
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER disk_full ON esf_events"))
        assert store.flush_spool(timeout=60)
        [stored] = result.wait(timeout=30)
        assert stored.data == {"i": 1}
    finally:
        store.close()
