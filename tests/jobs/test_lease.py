"""The worker's lease keeper: job leases and the stalled-consumer watch, against a real Redis."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import celery.worker.state
import pytest
import redis
from celery import Celery
from celery.worker.request import Request
from esf.workers._lease import LeaseKeeper, check_lease_internals, held_delivery_tags, lease_internals_problems
from kombu.message import Message

import esf
from esf.errors import MissingDependency
from esf.foundation import Foundation
from tests.servers import PrivateRedis

from . import apps
from .harness import Worker, settings_env, wait_for


def test_an_idle_worker_with_jobs_waiting_past_the_limit_is_restarted(redis_url: str) -> None:
    calls: list[int] = []
    keeper = LeaseKeeper(redis_url, 60, queues=("jobs",), stall_after_s=10, on_stall=lambda: calls.append(1))
    client = redis.Redis.from_url(redis_url)
    try:
        # An idle worker and an empty queue: nothing to do
        assert not keeper.check_stall(now=0)
        assert not keeper.check_stall(now=100)
        # Jobs waiting (here at priority step 3) while the worker holds none: watched, then restarted
        client.lpush("jobs\x06\x163", b"{}")
        assert keeper.waiting() == 1
        assert not keeper.check_stall(now=200)
        assert not keeper.check_stall(now=205)
        assert keeper.check_stall(now=211)
        assert calls == [1]
        # Once the queue drains the watch starts over
        client.delete("jobs\x06\x163")
        assert not keeper.check_stall(now=300)
    finally:
        client.close()


@pytest.fixture
def held() -> Iterator[list[Request]]:
    """Celery Requests put in this process's worker state as a worker would: ``task_reserved``, or held for an ETA."""
    app = Celery("lease-test", broker="memory://", set_as_current=False)

    @app.task(name="t.lease", shared=False)
    def lease(x: int) -> int:
        return x

    body = json.dumps([[1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    requests: list[Request] = []
    for n in range(3):
        message = Message(body=body, delivery_tag=f"tag-{n}", content_type="application/json",
                          content_encoding="utf-8", headers={"task": "t.lease", "id": f"job-{n}"},
                          delivery_info={"exchange": "", "routing_key": "q"}, channel=None)
        requests.append(Request(message, app=app))
    celery.worker.state.task_reserved(requests[0])
    celery.worker.state.task_reserved(requests[1])
    celery.worker.state.scheduled_requests.add(requests[2])
    try:
        yield requests
    finally:
        celery.worker.state.task_ready(requests[0])
        celery.worker.state.task_ready(requests[1])
        celery.worker.state.scheduled_requests.discard(requests[2])


def test_leases_move_the_held_deliveries_to_now_and_add_none(redis_url: str, held: list[Request]) -> None:
    keeper = LeaseKeeper(redis_url, 60)
    client = redis.Redis.from_url(redis_url)
    try:
        # Given three held deliveries (two reserved, one held for an ETA): two delivered long ago are in
        # kombu's unacked_index, the third was acknowledged meanwhile; and another worker's delivery
        assert sorted(held_delivery_tags()) == ["tag-0", "tag-1", "tag-2"]
        client.zadd("unacked_index", {"tag-0": 1000.0, "tag-2": 1000.0, "other-worker": 1000.0})
        # When the keeper refreshes
        assert keeper.refresh() == 3
        # Then the held deliveries' scores are now (the Redis server's clock), the acknowledged one is not
        # added back, and the other worker's delivery keeps its score
        server_now = float(client.time()[0])
        scores = dict(client.zrange("unacked_index", 0, -1, withscores=True))
        assert set(scores) == {b"tag-0", b"tag-2", b"other-worker"}
        assert abs(scores[b"tag-0"] - server_now) < 30 and abs(scores[b"tag-2"] - server_now) < 30
        assert scores[b"other-worker"] == 1000.0
    finally:
        client.close()


def test_the_lease_internals_are_present_in_the_installed_celery_and_kombu() -> None:
    # Given the installed Celery and kombu, when the worker's start-up check runs, then nothing is missing
    assert lease_internals_problems() == []
    check_lease_internals()


def test_a_celery_without_an_internal_the_lease_needs_stops_the_worker_at_start_up(
    redis_url: str, data_dir, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    # Given a Celery without scheduled_requests (as Celery 5.5 and 5.6 are)
    monkeypatch.delattr(celery.worker.state, "scheduled_requests")
    # When a lease keeper is built, or a worker runs its start-up checks on a Redis broker
    # Then both refuse, naming what is missing and what to install
    with pytest.raises(MissingDependency, match="scheduled_requests.*celery>=5.7"):
        LeaseKeeper(redis_url, 60)
    fnd = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir)))
    try:
        with pytest.raises(MissingDependency, match="scheduled_requests"):
            fnd._runtime.check_broker()
    finally:
        fnd.close()


@pytest.mark.slow
def test_a_live_worker_keeps_moving_the_lease_of_the_job_it_runs(redis_url: str, tmp_path: Path) -> None:
    # Given a worker on Redis running an 8 s job, with a visibility timeout of 60 s so that kombu cannot
    # restore (and re-stamp) the delivery during the test; the lease moves it every 10 / 3 s (the stall watch)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url, queues=(queue,), data_dir=str(tmp_path),
                       extra={"ESF_JOBS_VISIBILITY_TIMEOUT_S": "60"})
    fnd = apps.build(esf.Settings.from_env(env))
    client = redis.Redis.from_url(redis_url)
    worker = Worker(env, tmp_path / "w.log", concurrency=1)
    try:
        worker.wait_ready()
        handle = fnd.jobs.enqueue("t.record", uuid.uuid4().hex, 8)
        # When its delivery shows in kombu's unacked_index
        [(tag, first)] = wait_for(lambda: client.zrange("unacked_index", 0, -1, withscores=True), timeout=60,
                                  interval=0.05, message="the job's delivery in unacked_index")
        # Then the worker moves its score forward while the job runs (kombu alone never does)
        wait_for(lambda: (client.zscore("unacked_index", tag) or 0) > first + 1, timeout=30, interval=0.1,
                 message="the lease moving the delivery's score")
        assert handle.wait(60) == 1
    finally:
        worker.discard()
        fnd.close()
        client.close()


def test_a_broker_outage_is_logged_once_not_every_round_and_its_end_is_logged(
    private_redis: PrivateRedis, held: list[Request], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a keeper refreshing held deliveries every 0.5 s on a Redis of this test
    keeper = LeaseKeeper(private_redis.url, 2)
    caplog.set_level(logging.WARNING, logger="esf.workers")
    keeper.start()
    try:
        wait_for(lambda: keeper.rounds >= 1, timeout=30, message="a first round")
        # When Redis is down for several rounds
        private_redis.kill()
        wait_for(lambda: keeper.failed_rounds >= 4, timeout=60, message="four failed rounds")
        # Then the failure was logged once
        failures = [r for r in caplog.records if "could not refresh job leases" in r.getMessage()]
        assert len(failures) == 1
        # When Redis is back, then the recovery is logged and rounds go on
        private_redis.start()
        done = keeper.rounds
        wait_for(lambda: keeper.rounds > done, timeout=60, message="a round after the outage")
        assert any("job leases refreshed again" in r.getMessage() for r in caplog.records)
    finally:
        keeper.stop()
