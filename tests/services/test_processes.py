"""Service tasks in real processes: default schedules under two beats, the services worker, DLQ and replay."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.beat.app import read_fires
from tests.beat.conftest import BeatProcess, beat_env
from tests.faults.proxy import FaultProxy
from tests.jobs.harness import Worker, settings_env, wait_for
from tests.servers import PrivateRedis

pytestmark = pytest.mark.slow

SCHEDULED = ("esf.events.prune", "esf.events.outbox_sweep", "esf.config.reconcile", "esf.telemetry.export",
             "esf.telemetry.rollup")
SERVICES = ("events", "config", "telemetry")


def fires_of(fire_log: Path, name: str) -> list[dict[str, object]]:
    return [f for f in read_fires(fire_log) if str(f["key"]).startswith(f"schedule:{name}:")]


def test_two_beats_fire_each_default_schedule_once_per_occurrence(redis_url: str, data_dir: Path, tmp_path: Path,
                                                                  unique: str) -> None:
    # Given two `esf beat` processes started at once, every default schedule on and due every second
    env = beat_env("redis", redis_url=redis_url, data_dir=data_dir)
    env.update({"ESF_SERVICES_SCHEDULES": "true", "ESF_SERVICES_EVENTS_PRUNE": "true",
                "ESF_SERVICES_TELEMETRY_PUSH_EXPORTERS": "statsd",
                "ESF_JOBS_SERVICE_NAMESPACE": f"esf-{unique}", "BEAT_TEST_FIRE_LOG": str(tmp_path / "fires.jsonl")})
    for name in SCHEDULED:
        env[f"ESF_SERVICES_{name.removeprefix('esf.').replace('.', '_').upper()}_EVERY_S"] = "1"
    fire_log = tmp_path / "fires.jsonl"
    beats = [BeatProcess(env, tmp_path / f"beat-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: all(b.started() for b in beats), timeout=90, message="both beats started")
        # When each default schedule has fired four times
        wait_for(lambda: all(len(fires_of(fire_log, n)) >= 4 for n in SCHEDULED), timeout=120,
                 message="four fires of each default schedule")
    finally:
        codes = [b.stop() for b in beats]
    assert codes == [0, 0], [b.log() for b in beats]
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        for name in SCHEDULED:
            fires = fires_of(fire_log, name)
            dues = [int(str(f["key"]).rsplit(":", 1)[1]) for f in fires]
            # Then no occurrence was sent twice, and they sit on the 1 s grid, on the service's queue
            assert len(set(dues)) == len(dues), (name, dues)
            assert all((b - a) % 1000 == 0 and b > a for a, b in itertools.pairwise(sorted(dues)))
            assert {f["queue"] for f in fires} == {fnd.settings.jobs.service_queue(name.split(".")[1])}
        # And the broker holds exactly the fired messages, one per occurrence
        for service in SERVICES:
            names = [n for n in SCHEDULED if n.split(".")[1] == service]
            queued = [json.loads(m) for m in fnd.redis.lrange(fnd.settings.jobs.service_queue(service), 0, -1)]
            keys = sorted(m["headers"]["esf_idempotency_key"] for m in queued)
            assert keys == sorted(str(f["key"]) for n in names for f in fires_of(fire_log, n))
    finally:
        fnd.close()


@pytest.fixture
def down(tmp_path: Path, pg_url: str) -> Iterator[tuple[FaultProxy, PrivateRedis, str]]:
    """The event store's PostgreSQL behind a proxy not listening yet, and a config-store Redis not started yet."""
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    proxy = FaultProxy(parts.port or 5432, listening=False)
    url = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    redis = PrivateRedis(tmp_path / "config-redis")
    try:
        yield proxy, redis, url
    finally:
        proxy.close()
        redis.stop()


@pytest.fixture
def services_worker(redis_url: str, data_dir: Path, tmp_path: Path,
                    down: tuple[FaultProxy, PrivateRedis, str]) -> Iterator[tuple[Worker, dict[str, str]]]:
    """`esf worker --profile services` (settings workers.profile) with its stores down."""
    _, redis, db_url = down
    env = settings_env(redis_url, queues=("default", "other"), data_dir=str(data_dir), extra={
        # Results stay on the shared Redis: the private one holds the configuration store (and locks).
        "ESF_WORKERS_PROFILE": "services", "ESF_REDIS_URL": redis.url, "ESF_RESULT_BACKEND": redis_url,
        "ESF_DATABASE_URL": db_url,
        "ESF_SERVICES_SCHEDULES": "false", "ESF_SERVICES_MAX_BACKOFF_S": "0.2",
        "ESF_SERVICES_TELEMETRY_PUSH_EXPORTERS": "statsd",
        "ESF_CONFIG_STORE_TIMEOUT_S": "1"})
    worker = Worker(env, tmp_path / "worker.log", concurrency=2, app="tests.services.apps:make")
    try:
        worker.wait_ready()
        yield worker, env
    finally:
        worker.discard()


def test_the_services_worker_consumes_only_the_esf_queues(services_worker: tuple[Worker, dict[str, str]]) -> None:
    _worker, env = services_worker
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        # When the broker is asked which queues the worker consumes
        replies = wait_for(lambda: fnd.celery.control.inspect(timeout=2).active_queues(), timeout=60,
                           message="the worker answers")
        (queues,) = replies.values()
        # Then they are the six service queues of its namespace, and no application queue
        assert {q["name"] for q in queues} == set(fnd.settings.jobs.service_queues)
    finally:
        fnd.close()


def test_each_service_task_that_keeps_failing_is_dead_lettered_with_its_reason_and_succeeds_on_replay(
        services_worker: tuple[Worker, dict[str, str]], down: tuple[FaultProxy, PrivateRedis, str]) -> None:
    worker, env = services_worker
    proxy, redis, _ = down
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        # Given the event store's database and the Redis of the configuration and telemetry stores unreachable
        # When prune, the outbox sweep, reconcile, the telemetry export and the rollup are enqueued
        sent = {name: fnd.jobs.enqueue(name, correlation_id=f"c-{name}").id for name in SCHEDULED}

        def entries() -> dict[str, esf.jobs.DeadLetter]:
            found = {e.job: e for q in SERVICES
                     for e in fnd.jobs.dlq.list(fnd.settings.jobs.service_queue(q))}
            return found if set(found) >= set(SCHEDULED) else {}

        # Then each ends, its retries spent, in its service's DLQ with the reason and its correlation id
        try:
            dead = wait_for(entries, timeout=180, message="a dead letter per task")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.log()}") from None
        for name in SCHEDULED:
            entry = dead[name]
            assert entry.job_id == sent[name]
            assert entry.queue == fnd.settings.jobs.service_queue(name.split(".")[1])
            assert entry.reason == "retries_exhausted", entry
            assert entry.attempts == fnd.jobs.get(name).options.retries + 1
            assert entry.correlation_id == f"c-{name}"
        assert dead["esf.events.prune"].exception_type == "ServiceUnavailable"
        assert dead["esf.config.reconcile"].exception_type == "ServiceUnavailable"
        assert dead["esf.telemetry.export"].exception_type == "ServiceUnavailable"
        assert dead["esf.telemetry.rollup"].exception_type == "ServiceUnavailable"
        # When the servers are back and every entry is replayed
        proxy.listen()
        redis.start()
        wait_for(lambda: _answers(redis.url), timeout=30, message="the Redis serving (not only listening)")
        for name in SCHEDULED:
            fnd.jobs.dlq.replay([dead[name].id])
        # Then each succeeds, with its own result, and the DLQs are empty (the result backend holds the
        # dead-lettered run's FAILURE under the same job id until the replay's result replaces it)
        try:
            wait_for(lambda: all(fnd.jobs.status(sent[n]) == "succeeded" for n in SCHEDULED), timeout=90,
                     message="the replayed jobs succeeded")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.log()}") from None
        assert fnd.jobs.wait(sent["esf.events.prune"], timeout=60)["deleted"] == 0
        assert fnd.jobs.wait(sent["esf.events.outbox_sweep"], timeout=60) == {"relayed": 0}
        report = fnd.jobs.wait(sent["esf.config.reconcile"], timeout=60)
        assert report["store_version"] == 0 and report["diverged"] == []
        assert fnd.jobs.wait(sent["esf.telemetry.export"], timeout=60)["exported"] == ["telemetry.statsd"]
        rolled = fnd.jobs.wait(sent["esf.telemetry.rollup"], timeout=60)  # the first run: a bounded catch-up
        assert rolled["minutes"] == fnd.settings.services.telemetry_rollup_max_minutes and rolled["behind_minutes"]
        for service in SERVICES:
            assert fnd.jobs.dlq.list(fnd.settings.jobs.service_queue(service)).entries == ()
        # And their lifecycle is in the job history, whose last run `esf services` shows
        status = wait_for(lambda: (s := {r.task.name: r for r in fnd.services.status()})
                          and all(s[n].last_run and s[n].last_run["type"] == "job.succeeded" for n in SCHEDULED)
                          and s, timeout=60, message="the last runs in the job history")
        assert {status[n].last_run["job_id"] for n in SCHEDULED} == set(sent.values())
        # (the enqueue's event was spooled here while the database was down, and arrives when it drains)
        steps = {"job.enqueued", "job.started", "job.retried", "job.dead_lettered", "job.replayed", "job.succeeded"}
        wait_for(lambda: {e.event_type for e in fnd.events.read_correlation("c-esf.events.prune")} >= steps,
                 timeout=60, message="every lifecycle step of the prune job in the history")
    finally:
        fnd.close()


def _answers(url: str) -> bool:
    """The Redis answers PING: it has finished loading its data, not only opened its port."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
