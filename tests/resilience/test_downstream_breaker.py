"""Jobs that know their downstream: one worker's failures open the shared breaker, the other worker
defers its jobs without calling, nothing reaches the DLQ, and every job completes once after recovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from esf.resilience import RedisSharedState
from tests.jobs.harness import settings_env, wait_for
from tests.resilience.workers import QueueWorker


@pytest.mark.slow
def test_open_breaker_defers_jobs_on_every_worker(redis_url: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = settings_env(redis_url, queues=("default", "qa", "qb"), data_dir=str(tmp_path / "data"), extra={
        "ESF_RESILIENCE_BREAKER_FAILURES": "2",
        "ESF_RESILIENCE_BREAKER_RESET_S": "8",
        "ESF_RESILIENCE_BREAKER_MAX_RESET_S": "8",
        "ESF_RESILIENCE_DEFER_MAX_S": "1",
    })
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tests.resilience.apps import make

    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    shared = RedisSharedState(lambda: client)
    a = QueueWorker(env, tmp_path / "a.log", queues="qa")
    b = QueueWorker(env, tmp_path / "b.log", queues="qb")
    fnd = make()
    try:
        wait_for(lambda: a.ready() and b.ready(), timeout=90, message="both workers")
        charge = fnd.jobs.get("tests.resilience.charge")
        client.set("test:api:down", 1)
        # Worker A meets the failing API: two failures open the breaker for everyone.
        first = [charge.enqueue(order, queue="qa") for order in (0, 1)]
        wait_for(lambda: shared.check("payments_api", probe=False, probe_ttl_s=1)[0] == "open", timeout=60,
                 message="the breaker to open")
        # Worker B defers its jobs without calling the API.
        later = [charge.enqueue(order, queue="qb") for order in range(2, 7)]
        wait_for(lambda: b.log().count("deferred") >= len(later), timeout=30, message="B's deferrals")
        assert shared.check("payments_api", probe=False, probe_ttl_s=1)[0] == "open"
        assert client.get(f"test:api:started:{b.proc.pid}") is None  # not even started
        assert client.get(f"test:api:calls:{b.proc.pid}") is None
        assert client.llen("test:done") == 0

        # The API recovers: after the reset timeout one probe succeeds and every job completes once.
        client.delete("test:api:down")
        wait_for(lambda: client.llen("test:done") >= 7, timeout=90, message="all jobs done")
        done = sorted(int(x) for x in client.lrange("test:done", 0, -1))
        assert done == list(range(7))
        # Each job finished under the id it was enqueued with (a deferral keeps it).
        for handle in first + later:
            wait_for(lambda h=handle: fnd.jobs.status(h.id) == "succeeded", timeout=30, message=f"{handle.id}")
        assert sum(fnd.jobs.dlq.depth().values()) == 0
        assert shared.check("payments_api", probe=False, probe_ttl_s=1)[0] == "closed"
        assert "retrying in" not in b.log()  # B never spent a retry

        # A breaker that opens while the job runs defers it too (it has no retry to spend).
        handle = fnd.jobs.get("tests.resilience.opens_mid_flight").enqueue(7, queue="qb")
        wait_for(lambda: fnd.jobs.status(handle.id) in ("succeeded", "failed"), timeout=60, message="mid-flight")
        assert fnd.jobs.status(handle.id) == "succeeded"
        assert client.lrange("test:ledger:done", 0, -1) == [b"7"]
        assert sum(fnd.jobs.dlq.depth().values()) == 0
    finally:
        a.kill()
        b.kill()
        fnd.close()
