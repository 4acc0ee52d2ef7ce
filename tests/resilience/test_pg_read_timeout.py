"""PostgreSQL's read timeout (``resilience.database_read_timeout_s``) against a server that is slow, not silent.

A silent server is the proxy's black hole (tests/faults/test_proxy.py). Here the server is alive and slow:
a statement that waits longer than the statement timeout is cancelled by the server (the connection is kept);
a call that waits longer than the read timeout is broken by the client, except the calls that legitimately
wait long (queries, catch-up reads, migrations), which wait up to the statement timeout plus the read
timeout, or without a bound. The wait is made by a lock another connection holds: the test releases it
once the server says the call has waited well past the read timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import esf
from esf import Event, Foundation, Q
from esf.errors import ServiceUnavailable
from tests.jobs.harness import wait_for

#: The read timeout of these tests, in seconds; a blocked call is released after waiting twice as long.
READ_TIMEOUT_S = 1.0


class Locker:
    """A connection of the test's own that holds a lock until released."""

    def __init__(self, url: str, statement: str) -> None:
        self.conn = psycopg.connect(url)
        self.conn.execute(statement)

    def waited_past(self, seconds: float) -> bool:
        """True when another backend of this database has waited on a lock for more than ``seconds``."""
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as probe:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s "
                "AND wait_event_type = 'Lock' AND clock_timestamp() - query_start > make_interval(secs => %s)",
                (self.conn.info.backend_pid, seconds)).fetchone()
        return bool(row and row[0])

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def blocked(call: Callable[[], Any], locker: Locker) -> Any:
    """Run ``call`` in a thread while ``locker`` blocks it; release once it has waited 2x the read timeout.

    Returns:
        What ``call`` returned, or the exception it raised.
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: locker.waited_past(2 * READ_TIMEOUT_S) or bool(box), timeout=60,
                 message="the call to wait on the lock")
    finally:
        locker.release()
    thread.join(60)
    assert box, "the call did not return once the lock was released"
    return box[0]


@pytest.fixture
def fnd(pg_url: str, data_dir: Path) -> Iterator[Foundation]:
    settings = esf.Settings.from_env({
        "ESF_DATABASE_URL": pg_url, "ESF_DATA_DIR": str(data_dir), "ESF_TELEMETRY_ENABLED": "false",
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false", "ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "ESF_RESILIENCE_DATABASE_STATEMENT_TIMEOUT_S": "30"})
    foundation = Foundation(settings)
    foundation.events.append(Event("t.tick", {"n": 1}, stream_id="s-1"))
    try:
        yield foundation
    finally:
        foundation.close()


def lock_events(pg_url: str) -> Locker:
    return Locker(pg_url, "LOCK TABLE esf_events IN ACCESS EXCLUSIVE MODE")


def test_a_slow_append_is_cancelled_by_the_server_at_the_statement_timeout_and_keeps_its_connection(
        pg_url: str, data_dir: Path) -> None:
    # Given a store whose statements time out after 0.5 s on the server, and a read timeout far above
    settings = esf.Settings.from_env({
        "ESF_DATABASE_URL": pg_url, "ESF_DATA_DIR": str(data_dir), "ESF_TELEMETRY_ENABLED": "false",
        "ESF_RESILIENCE_DATABASE_STATEMENT_TIMEOUT_S": "0.5", "ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": "20"})
    with Foundation(settings) as fnd:
        fnd.events.append(Event("t.tick", {"n": 1}, stream_id="s-1"))
        # When an append (that cannot be spooled: it names the stream's version) waits on a lock
        locker = lock_events(pg_url)
        try:
            with pytest.raises(ServiceUnavailable) as caught:
                fnd.events.append(Event("t.tick", {"n": 2}, stream_id="s-1"), expected_version=1)
        finally:
            locker.release()
        # Then the server cancelled it (statement timeout), and the client kept the connection
        cause = caught.value.__cause__
        assert isinstance(cause, sa.exc.DBAPIError)
        assert isinstance(cause.orig, psycopg.errors.QueryCanceled), cause
        assert "statement timeout" in str(cause.orig)
        assert not cause.connection_invalidated
        # And the next append goes through
        fnd.events.append(Event("t.tick", {"n": 2}, stream_id="s-1"), expected_version=1)


def test_an_append_waiting_longer_than_the_read_timeout_is_broken_and_spooled(fnd: Foundation, pg_url: str) -> None:
    # Given appends bounded by a 1 s read timeout (the statement timeout, 30 s, is far above)
    # When an append waits on a lock past the read timeout
    result = blocked(lambda: fnd.events.append(Event("t.tick", {"n": 2})), lock_events(pg_url))
    # Then it returned spooled: the client broke the call, the database counted as unavailable
    assert not isinstance(result, Exception), result
    assert result.is_pending
    assert fnd.events.flush_spool(timeout=60)  # type: ignore[attr-defined]
    assert [e.data["n"] for e in fnd.events.read_all()] == [1, 2]


def test_an_append_that_cannot_be_spooled_fails_naming_the_read_timeout_and_the_pool_recovers(
        fnd: Foundation, pg_url: str) -> None:
    # When an append naming its stream's version (never spooled) waits on a lock past the read timeout
    result = blocked(lambda: fnd.events.append(Event("t.tick", {"n": 2}, stream_id="s-1"), expected_version=1),
                     lock_events(pg_url))
    # Then it fails as unavailable, saying the server did not answer in time (not a secondary error)
    assert isinstance(result, ServiceUnavailable), result
    assert "read timeout" in str(result), result
    # And the next append gets a working connection
    fnd.events.append(Event("t.tick", {"n": 2}, stream_id="s-1"), expected_version=1)
    assert [e.data["n"] for e in fnd.events.read_all()] == [1, 2]


def test_a_query_waits_past_the_read_timeout_up_to_the_statement_timeout(fnd: Foundation, pg_url: str) -> None:
    # When a query waits on a lock for twice the read timeout
    result = blocked(lambda: fnd.events.query(Q.type("t.tick")), lock_events(pg_url))
    # Then it is not broken: it answers once the lock is gone
    assert not isinstance(result, Exception), result
    assert [e.data["n"] for e in result] == [1]


def test_a_subscription_catch_up_read_waits_past_the_read_timeout(fnd: Foundation, pg_url: str) -> None:
    # Given a subscription declared on the store
    @fnd.subscription("slow_reads", filter=Q.type("t.tick"))
    def handle(event: Any) -> None:
        pass

    # When its tick reads the events while a lock holds them for twice the read timeout
    result = blocked(lambda: fnd.subscriptions.tick("slow_reads"), lock_events(pg_url))
    # Then the tick is not broken: it reads the event once the lock is gone
    assert not isinstance(result, Exception), result
    assert result.read == 1


def test_a_projection_rebuild_waits_past_the_read_timeout(fnd: Foundation, pg_url: str) -> None:
    # Given a projection with a table of its own
    engine: sa.Engine = fnd.events.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE rt_ticks (position BIGINT NOT NULL)"))

    @fnd.projection("rt_ticks", filter=Q.type("t.tick"), tables=["rt_ticks"])
    def project(event: Any, session: Any) -> None:
        session.execute(sa.text("INSERT INTO rt_ticks (position) VALUES (:p)"), {"p": event.position})

    # When its rebuild replays the events while a lock holds them for twice the read timeout
    result = blocked(lambda: fnd.subscriptions.rebuild("rt_ticks"), lock_events(pg_url))
    # Then the rebuild is not broken: it replays the event and swaps the table in
    assert not isinstance(result, Exception), result
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM rt_ticks")).scalar() == 1


def test_retention_waits_past_the_read_timeout(fnd: Foundation, pg_url: str) -> None:
    # Given a stream with two events (retention keeps a stream's latest)
    fnd.events.append(Event("t.tick", {"n": 2}, stream_id="s-1"))
    # When a prune deletes while a lock holds the events for twice the read timeout
    result = blocked(lambda: fnd.events.prune(older_than=timedelta(0)), lock_events(pg_url))
    # Then it is not broken: it deletes the older event once the lock is gone
    assert result == 1, result


def test_a_migration_waits_for_its_lock_without_a_read_timeout(pg_url: str) -> None:
    from plugins.sqlalchemy_events._engine import make_engine
    from plugins.sqlalchemy_events.migrations import ADVISORY_LOCK_KEY, head_revision, upgrade

    # Given an engine with a 1 s read timeout and a 0.5 s statement timeout, on an empty database
    engine = make_engine(pg_url, read_timeout_s=READ_TIMEOUT_S, statement_timeout_s=0.5)
    try:
        # When another process holds the migrations' lock for twice the read timeout
        locker = Locker(pg_url, f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        result = blocked(lambda: upgrade(engine), locker)
        # Then the migration waited for it (neither timeout applies to it) and ran
        assert result == head_revision(), result
    finally:
        engine.dispose()


def test_the_subscription_dispatchers_listen_wait_is_not_cut_by_the_read_timeout(pg_url: str, data_dir: Path) -> None:
    # Given a read timeout (0.2 s) shorter than one slice of the dispatcher's wait for notifications (0.25 s),
    # and a poll interval long enough that only a notification wakes the dispatcher during the test
    settings = esf.Settings.from_env({
        "ESF_DATABASE_URL": pg_url, "ESF_DATA_DIR": str(data_dir), "ESF_TELEMETRY_ENABLED": "false",
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false", "ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": "0.2",
        "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "60"})
    with Foundation(settings) as fnd:
        fnd.subscriptions.start_dispatcher()
        try:
            dispatcher = fnd.subscriptions._dispatcher  # type: ignore[attr-defined]
            wait_for(lambda: dispatcher._listener is not None, timeout=60, message="the listener")
            listener = dispatcher._listener
            pid = listener.info.backend_pid
            seen = dispatcher.wakeups_seen

            def listened_for(seconds: float) -> bool:
                with psycopg.connect(pg_url, autocommit=True) as probe:
                    row = probe.execute("SELECT clock_timestamp() - state_change > make_interval(secs => %s) "
                                        "FROM pg_stat_activity WHERE pid = %s AND state = 'idle'",
                                        (seconds, pid)).fetchone()
                return bool(row and row[0])

            # When its listening connection has waited for 5x the read timeout
            wait_for(lambda: listened_for(1.0), timeout=60, message="the listener to wait 1 s")
            # Then it is still the same connection, and a notification sent now wakes the dispatcher
            with psycopg.connect(pg_url, autocommit=True) as notifier:
                notifier.execute("NOTIFY esf_events")
            wait_for(lambda: dispatcher.wakeups_seen > seen, timeout=30, message="the wake-up")
            assert dispatcher._listener is listener and not listener.closed
        finally:
            fnd.subscriptions.stop_dispatcher()


def test_the_read_timeout_setting_defaults_to_30_s_and_refuses_a_negative_value() -> None:
    from esf.errors import SettingsError

    assert esf.Settings.from_env({}).resilience.database_read_timeout_s == 30.0
    off = esf.Settings.from_env({"ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": "0"})
    assert off.resilience.database_read_timeout_s == 0
    with pytest.raises(SettingsError) as caught:
        esf.Settings.from_env({"ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": "-1"})
    assert caught.value.code == "invalid_settings" and "resilience.database_read_timeout_s" in str(caught.value)


def test_an_engine_without_a_read_timeout_uses_plain_psycopg_connections(pg_url: str) -> None:
    from plugins.sqlalchemy_events._engine import make_engine
    from plugins.sqlalchemy_events._read_timeout import DeadlineConnection

    for read_timeout_s, bounded in ((0, False), (READ_TIMEOUT_S, True)):
        engine = make_engine(pg_url, read_timeout_s=read_timeout_s)
        try:
            with engine.connect() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, DeadlineConnection) is bounded
                assert not bounded or raw.limit_s == READ_TIMEOUT_S
        finally:
            engine.dispose()
