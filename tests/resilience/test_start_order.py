"""Start in any order: a worker started while its broker, or its database, is down runs once they are up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from esf import Foundation, Settings
from tests.faults.proxy import FaultProxy
from tests.jobs.harness import settings_env, wait_for
from tests.resilience.test_health_endpoint import TOKEN, get
from tests.resilience.workers import QueueWorker, app_foundation, charge_runs, worker_waiting_for
from tests.servers import PrivateRedis, free_port


@pytest.mark.slow
def test_worker_started_before_its_redis_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = PrivateRedis(tmp_path / "redis")  # not started: the broker is down
    # It keeps trying to connect (and does not exit) while nothing listens.
    worker, env = worker_waiting_for(server, tmp_path)
    try:
        server.start()
        fnd = app_foundation(env, monkeypatch)
        try:
            charge_runs(fnd, server.url)
        finally:
            fnd.close()
    finally:
        worker.kill()
        server.kill()


@pytest.mark.slow
def test_worker_started_while_postgresql_is_unreachable(pg_url: str, redis_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = FaultProxy(5432, listening=False)  # the database's port is closed
    db_url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    port = free_port()
    env = settings_env(redis_url, data_dir=str(tmp_path / "data"), extra={
        "ESF_DATABASE_URL": db_url,
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false",
        "ESF_RESILIENCE_DATABASE_CONNECT_TIMEOUT_S": "1",
        "ESF_HEALTH_PORT": str(port), "ESF_HEALTH_TOKEN": TOKEN, "ESF_HEALTH_CACHE_S": "0.2",
    })
    worker = QueueWorker(env, tmp_path / "worker.log", queues="default")
    fnd = app_foundation(env, monkeypatch)
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: worker.ready(), timeout=90, message="the worker")
        started = time.monotonic()
        for order in range(3):
            fnd.jobs.get("tests.resilience.append").enqueue(order)
        # The appends are spooled on the worker's node; its events service is degraded, and ready.
        wait_for(lambda: client.llen("test:appended") == 3, timeout=60, message="the appends")
        code, report = get(port, "/readyz")
        assert code == 200 and report["ready"] is True
        events = report["services"]["events"]
        assert events["status"] == "degraded" and events["spool_depth"] == 3, events
        assert "spool depth 3" in events["reason"]
        # The database comes back: the spool drains into it and the worker is healthy again.
        proxy.listen()
        wait_for(lambda: get(port, "/readyz")[1]["services"]["events"]["status"] == "ok", timeout=90,
                 message="the spool to drain")
        with Foundation(Settings(database_url=pg_url, data_dir=str(tmp_path / "reader"))) as reader:
            stored = sorted(e.data["order"] for o in range(3) for e in reader.events.read_stream(f"order-{o}"))
        assert stored == [0, 1, 2]
        assert time.monotonic() - started < 120
    finally:
        worker.kill()
        fnd.close()
        proxy.close()


def test_producer_with_its_broker_down_gets_a_specific_error(tmp_path: Path) -> None:
    from esf.errors import ServiceUnavailable

    settings = Settings.from_mapping({"data_dir": str(tmp_path), "broker_url": f"redis://127.0.0.1:{free_port()}/0",
                                      "resilience": {"redis_connect_timeout_s": 0.5}})
    with Foundation(settings) as fnd:
        @fnd.job(name="tests.resilience.produced")
        def produced() -> None:
            pass

        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as info:
            produced.enqueue()
        assert "broker unreachable" in str(info.value)
        assert time.monotonic() - started < 60  # bounded by the publish retries, never blocked
        assert fnd.health()["ready"] is False
