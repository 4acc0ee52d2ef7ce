"""Process lifecycle: worker boot, start, fork and shutdown reach each service through its own hooks."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import esf
from esf.backends import RedisBackends
from esf.foundation import Foundation
from esf.lifecycle import ServiceLifecycle, dispatch


class Recorder(ServiceLifecycle):
    def __init__(self, name: str, calls: list[tuple[str, str]], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        self.calls.append((self.name, ",".join(queues)))
        if self.fail:
            raise RuntimeError("boom")


def test_dispatch_calls_each_service_in_order_and_a_failing_hook_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []
    services = [Recorder("a", calls, fail=True), object(), Recorder("b", calls)]
    with caplog.at_level(logging.ERROR, logger="esf"):
        dispatch(services, "on_worker_start", ("q1", "q2"))
    assert calls == [("a", "q1,q2"), ("b", "q1,q2")]
    assert "Recorder.on_worker_start failed" in caplog.text


def test_an_unknown_hook_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle hook"):
        dispatch([], "before_everything")


def test_worker_start_and_stop_reach_the_outbox_relay_and_the_subscription_dispatcher(data_dir: Path) -> None:
    # Given an embedded Foundation whose jobs and subscriptions are built
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        subscriptions = fnd.subscriptions
        # When the worker starts; Then the services' threads run
        fnd._runtime.started(queues=("default",))
        relay = fnd.jobs.outbox._thread
        assert relay is not None and relay.is_alive()
        assert subscriptions._dispatcher is not None
        # When it stops; Then they are stopped
        fnd._runtime.stopped()
        assert not relay.is_alive() and fnd.jobs.outbox._thread is None
        assert subscriptions._dispatcher is None


def test_worker_boot_marks_the_outbox_relay_as_running_in_a_forking_process(data_dir: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        assert fnd.jobs.outbox.forking is False
        fnd._runtime.boot()
        assert fnd.jobs.outbox.forking is True




def test_close_reaches_each_built_service_through_its_close_hook_last_built_first(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Given a Foundation whose event store, configuration, cache, telemetry and jobs are built
    fnd = Foundation(esf.Settings(data_dir=str(data_dir)))
    closed: list[str] = []
    for name in ("events", "config", "cache", "telemetry", "jobs"):
        service = getattr(fnd, name)
        original = service.close

        def close(*args: Any, _name: str = name, _original: Callable[..., None] = original) -> None:
            closed.append(_name)
            _original(*args)
            if _name == "telemetry":
                raise RuntimeError("boom")

        monkeypatch.setattr(service, "close", close)
    # When it closes, with the telemetry's close failing
    with caplog.at_level(logging.ERROR, logger="esf"):
        fnd.close()
    # Then every service was closed, in reverse start-up order, and the failure was logged
    assert closed == ["jobs", "telemetry", "cache", "config", "events"]
    assert "Telemetry.close failed" in caplog.text
    assert "config" not in fnd.__dict__ and "events" not in fnd.__dict__


def in_forked_child(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``probe()`` run in a child forked from this process (with os.fork, as a Celery pool does)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(probe()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(data))


def test_any_fork_resets_the_foundation_and_each_service_in_the_child_and_leaves_the_parent_alone(
        data_dir: Path) -> None:
    # Given a Foundation whose coordinator, configuration, event store and telemetry are built
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        coordinator = fnd.jobs.coordinator
        _ = fnd.config
        pool = fnd.events.engine.pool
        proc_id = fnd.telemetry.proc_id
        broker_pool = fnd.jobs.batches._connections()

        def probe() -> dict[str, Any]:
            return {"coordinator kept": "coordinator" in fnd.jobs.__dict__, "config kept": "config" in fnd.__dict__,
                    "pool kept": fnd.events.engine.pool is pool, "telemetry id kept": fnd.telemetry.proc_id == proc_id,
                    "broker pool kept": fnd.jobs.batches._connections() is broker_pool}

        # When the process forks (no Celery signal: a plain os.fork); Then the child dropped the parent's state
        assert in_forked_child(probe) == {"coordinator kept": False, "config kept": False, "pool kept": False,
                                          "telemetry id kept": False, "broker pool kept": False}
        # And the parent kept its own
        assert fnd.jobs.coordinator is coordinator and "config" in fnd.__dict__ and fnd.events.engine.pool is pool
        assert fnd.jobs.batches._connections() is broker_pool


def test_a_forked_child_opens_its_own_redis_clients(redis_url: str, data_dir: Path) -> None:
    # Given a Foundation on Redis, and a Redis factory of its own, each with a client in use
    settings = esf.Settings(redis_url=redis_url, data_dir=str(data_dir))
    backends = RedisBackends(redis_url, settings)
    own = backends.client()
    with Foundation(settings) as fnd:
        shared = fnd.redis
        assert shared.ping() and own.ping()

        def probe() -> dict[str, Any]:
            return {"foundation client kept": fnd.redis is shared, "factory client kept": backends.client() is own,
                    "works": bool(fnd.redis.ping())}

        # When the process forks; Then the child opens new clients, which work
        assert in_forked_child(probe) == {"foundation client kept": False, "factory client kept": False,
                                          "works": True}
        assert fnd.redis is shared and backends.client() is own
    own.close()


# -- the per-process writers: one mechanism (track_fork), a real write in the child and in the parent -------------


def test_a_forked_child_starts_its_own_job_history_writer_and_the_parent_keeps_its_own(data_dir: Path) -> None:
    from esf.events import JobHistoryHooks, create_event_store

    # Given a job-history writer whose thread runs and has written an event
    store = create_event_store(esf.Settings(data_dir=str(data_dir)))
    writer = JobHistoryHooks(store, flush_interval_s=0.05)
    try:
        writer.append_later(esf.Event("fork.parent", {"n": 1}, stream_id="fork-history"))
        assert writer.flush(30)
        thread = writer._thread
        assert thread is not None and thread.is_alive()

        def probe() -> dict[str, Any]:
            inherited = writer._thread is not None
            writer.append_later(esf.Event("fork.child", {"n": 2}, stream_id="fork-history"))
            flushed = writer.flush(30)
            return {"inherited a writer": inherited, "flushed": flushed,
                    "own writer": writer._thread is not None and writer._thread.is_alive()}

        # When the process forks; Then the child has no writer until its first event, starts its own and writes
        assert in_forked_child(probe) == {"inherited a writer": False, "flushed": True, "own writer": True}
        # And the parent's writer still runs and writes
        writer.append_later(esf.Event("fork.parent", {"n": 3}, stream_id="fork-history"))
        assert writer.flush(30) and writer._thread is thread and thread.is_alive()
        assert [e.data["n"] for e in store.read_stream("fork-history")] == [1, 2, 3]
    finally:
        writer.close()
        store.close()


def test_a_forked_child_starts_its_own_secrets_keeper_and_reads_a_secret(data_dir: Path) -> None:
    from esf.secrets import create_secrets_service
    from esf.settings import SecretsSettings

    # Given a secrets service on a file whose keeper thread runs
    path = data_dir / "secrets.json"
    path.write_text(json.dumps({"db": {"password": "s3cret"}}))
    settings = esf.Settings(data_dir=str(data_dir), secrets=SecretsSettings(backend="file",
                                                                            file_path=str(path)))
    service = create_secrets_service(settings)
    try:
        service.keeper.ensure()
        thread = service.keeper._thread
        assert service.keeper.running and thread is not None

        def probe() -> dict[str, Any]:
            inherited = service.keeper._thread is not None
            service.keeper.ensure()
            return {"inherited a keeper": inherited, "own keeper": service.keeper.running,
                    "read": service.get("db", "password").reveal() == "s3cret"}

        # When the process forks; Then the child starts its own keeper and reads from the backend
        assert in_forked_child(probe) == {"inherited a keeper": False, "own keeper": True, "read": True}
        # And the parent's keeper is the same running thread
        assert service.keeper._thread is thread and service.keeper.running
        assert service.get("db", "password").reveal() == "s3cret"
    finally:
        service.close()


def test_a_forked_child_opens_its_own_spool_connection_and_spools(data_dir: Path) -> None:
    from esf.events._spool import Spool
    from esf.events._validation import prepare_events

    # Given a spool whose connection this thread opened and used
    spool = Spool(data_dir / "spool.sqlite")
    try:
        spool.put(prepare_events(esf.Event("fork.spooled", {"n": 1})))
        parent_conn = spool._local.conn

        def probe() -> dict[str, Any]:
            inherited = getattr(spool._local, "conn", None) is not None
            spool.put(prepare_events(esf.Event("fork.spooled", {"n": 2})))
            return {"inherited a connection": inherited, "own connection": spool._local.conn is not parent_conn}

        # When the process forks; Then the child opens its own connection and spools through it
        assert in_forked_child(probe) == {"inherited a connection": False, "own connection": True}
        # And the parent keeps its connection and spools too: every entry is there, in order
        spool.put(prepare_events(esf.Event("fork.spooled", {"n": 3})))
        assert spool._local.conn is parent_conn
        assert [entry.events[0].data["n"] for entry in spool.peek(10)] == [1, 2, 3]
    finally:
        spool.close()


def test_a_forked_child_opens_its_own_connection_to_a_shared_sqlite_file(data_dir: Path) -> None:
    from esf._sqlite import SqliteFile

    # Given a SQLite file this thread has written to
    db = SqliteFile(data_dir / "shared.sqlite", "the test store")
    with db._tx() as conn:
        conn.execute("CREATE TABLE t (who TEXT)")
        conn.execute("INSERT INTO t VALUES ('parent')")
    parent_conn = db._db()

    def probe() -> dict[str, Any]:
        inherited = getattr(db._local, "db", None) is not None
        with db._tx() as conn:
            conn.execute("INSERT INTO t VALUES ('child')")
        return {"inherited a connection": inherited, "own connection": db._db() is not parent_conn}

    # When the process forks; Then the child writes through a connection of its own
    assert in_forked_child(probe) == {"inherited a connection": False, "own connection": True}
    # And the parent keeps its connection, and writes
    with db._tx() as conn:
        conn.execute("INSERT INTO t VALUES ('parent')")
        rows = [r[0] for r in conn.execute("SELECT who FROM t ORDER BY rowid")]
    assert db._db() is parent_conn and rows == ["parent", "child", "parent"]
    db.close()
