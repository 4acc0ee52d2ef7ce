"""The worker's lease keeper: job leases and the stalled-consumer watch, against a real Redis."""

from __future__ import annotations

import redis
from esf.workers._lease import LeaseKeeper


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


def test_leases_move_only_existing_deliveries(redis_url: str) -> None:
    keeper = LeaseKeeper(redis_url, 60)
    client = redis.Redis.from_url(redis_url)
    try:
        # Without held jobs, refreshing touches nothing
        assert keeper.refresh() == 0
        assert client.zcard("unacked_index") == 0
    finally:
        client.close()
