"""Refresh-ahead through a real worker on the esf.cache queue; a failing loader ends in esf.cache.dlq."""

from __future__ import annotations

import os
import uuid

import pytest

import esf
from tests.cache import worker_app
from tests.cache.conftest import wait_until
from tests.conftest import REDIS_HOST, REDIS_PORT, lease_redis_db
from tests.jobs.harness import Worker, settings_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One Redis database, queue and cache prefix for the module: its tests share one worker (each uses keys of
    its own, and reads the stats of its own Foundation)."""
    unique = uuid.uuid4().hex[:10]
    with lease_redis_db() as db:
        yield settings_env(f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", queues=(f"q-{unique}",),
                           data_dir=str(tmp_path_factory.mktemp("esf-data")),
                           extra={"ESF_CACHE_REDIS_PREFIX": f"t{unique}:", "ESF_CACHE_LOCK_LEASE_S": "2"})


@pytest.fixture
def fnd(env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    f = worker_app.make()
    f.cache.core.ensure_started()
    assert f.cache.core.subscribed.wait(10)
    yield f
    f.close()


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    w = Worker(env, tmp_path_factory.mktemp("worker") / "worker.log", concurrency=1,
               app="tests.cache.worker_app:make")
    try:
        w.wait_ready()
        yield w
    finally:
        w.discard()


def _pids(fnd, key):
    return [int(p) for p in fnd.redis.lrange(f"calls:{key}", 0, -1)]


def test_refresh_ahead_reloads_in_the_worker_while_callers_get_the_current_value(fnd, worker):
    # Given a price cached with refresh_after 0.5 s, loaded in this process
    key = f"sku-{uuid.uuid4().hex[:6]}"
    fnd.redis.set(f"source:{key}", "10")
    assert fnd.cache.fetch(key, "t.price", ttl=60, refresh_after=0.5) == 10
    # When the source changes and callers keep fetching past refresh_after
    fnd.redis.set(f"source:{key}", "11")
    seen = []
    assert wait_until(lambda: seen.append(fnd.cache.fetch(key, "t.price", ttl=60, refresh_after=0.5)) or
                      seen[-1] == 11, timeout=60, interval=0.05)
    # Then callers got the current value meanwhile (10, never an error), and then the refreshed one
    assert set(seen) == {10, 11} and seen[0] == 10
    # And this process ran the loader once; the reload ran in the worker (another process)
    pids = _pids(fnd, key)
    assert pids.count(os.getpid()) == 1
    assert any(p != os.getpid() for p in pids)
    assert fnd.cache.stats().namespaces["default"].refreshes >= 1


def test_a_refresh_whose_loader_keeps_failing_lands_in_the_cache_dead_letter_queue(fnd, worker):
    # Given a cached price whose source then fails
    key = f"sku-{uuid.uuid4().hex[:6]}"
    fnd.redis.set(f"source:{key}", "5")
    assert fnd.cache.fetch(key, "t.price", ttl=120, refresh_after=0.3) == 5
    fnd.redis.set(f"source:{key}", "fail")
    # When callers fetch past refresh_after
    seen = []

    def dead_letter():
        seen.append(fnd.cache.fetch(key, "t.price", ttl=120, refresh_after=0.3))
        return next((e for e in fnd.jobs.dlq.list() if e.job == esf.cache.REFRESH_JOB and key in str(e.kwargs)),
                    None)

    assert wait_until(lambda: dead_letter() is not None, timeout=90, interval=0.2), worker.log()
    entry = dead_letter()
    # Then the refresh job was retried, then dead-lettered on esf.cache's DLQ with the loader's error
    assert entry.queue == fnd.settings.jobs.service_queue("cache")
    assert entry.exception_type == "ConnectionError" and entry.attempts >= 2
    # And callers were served the current value all along, and one refresh was sent for it (not one per lease)
    assert set(seen) == {5} and len(seen) > 10
    assert fnd.cache.stats().namespaces["default"].refreshes == 1


def test_a_warmer_loads_its_keys_in_the_worker_and_this_process_then_hits(fnd, worker):
    # Given three keys with a value at the source
    keys = [f"w-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    for i, key in enumerate(keys):
        fnd.redis.set(f"source:{key}", str(i))
    # When they are warmed through the esf.cache queue
    handle = fnd.cache.warm("t.price", keys, namespace="prices", ttl=60)
    assert handle.wait(60) == {"namespace": "prices", "stored": 3}
    # Then this process reads them from the cache, loaded by the worker and not here
    prices = fnd.cache.namespace("prices")
    assert [prices.get(k) for k in keys] == [0, 1, 2]
    assert all(_pids(fnd, k) and os.getpid() not in _pids(fnd, k) for k in keys)
    # And an unknown loader or a bad key is refused before anything is sent
    with pytest.raises(esf.ValidationError):
        fnd.cache.warm("no.such.loader", keys)
    with pytest.raises(esf.ValidationError):
        fnd.cache.warm("t.price", ["bad\nkey"])
