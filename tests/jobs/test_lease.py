"""The worker's lease keeper: job leases and the stalled-consumer watch, against a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator

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

    @app.task(name="t.lease")
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
            fnd.check_broker()
    finally:
        fnd.close()
