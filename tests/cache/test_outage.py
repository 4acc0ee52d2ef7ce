"""Redis stopped and started under the cache: reads never raise, loaders run directly, and invalidations made
meanwhile reach the other processes once Redis is back."""

from __future__ import annotations

import threading

import pytest

from tests.cache.conftest import wait_until

pytestmark = pytest.mark.slow

OUTAGE = {"redis_timeout_s": 0.2, "breaker_failures": 2, "breaker_reset_s": 0.3, "coherence_s": 0.2}


def test_reads_go_on_while_redis_is_stopped_and_started(make_cache, private_redis):
    # Given a cache on a Redis of this test's own, and a value in it
    cache = make_cache(private_redis.url, **OUTAGE)
    cache.put("kept", "v1", ttl=60)
    errors: list[BaseException] = []
    served: list[object] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                served.append(cache.get("kept"))
                served.append(cache.fetch("loaded", lambda: "from loader", ttl=60))
            except BaseException as exc:  # any exception is a failure of the guarantee
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # When Redis stops while a thread reads
        private_redis.stop()
        assert wait_until(lambda: cache.health().status == "degraded", timeout=10)
        degraded_reads = len(served)
        assert wait_until(lambda: len(served) > degraded_reads + 50, timeout=10)
        # Then the value in process and the loader's value are served, counted as degraded
        assert cache.get("kept") == "v1"
        assert cache.stats().namespaces["default"].degraded > 0
        # When Redis starts again
        private_redis.start()
        # Then the cache is healthy again and keeps serving
        assert wait_until(lambda: cache.health().status == "ok", timeout=15)
        assert wait_until(lambda: cache.stats().breaker == "closed", timeout=5)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert errors == []
    assert set(served) <= {"v1", "from loader"}
    assert cache.get("kept") == "v1"


def test_a_resubscription_while_redis_cannot_answer_keeps_serving_the_in_process_copy(make_cache, private_redis):
    # Given a cached value, and a Redis that stopped long enough to open the cache's breaker
    cache = make_cache(private_redis.url, **OUTAGE)
    cache.put("kept", "v1", ttl=60)
    private_redis.stop()
    assert wait_until(lambda: cache.get("kept") == "v1" and cache.stats().breaker == "open", timeout=10)
    # When the invalidation channel reports a new subscription (messages may have been missed) while
    # Redis cannot answer reads yet (as when the subscriber reconnects first after a restart)
    cache.core._on_message(None)
    # Then the in-process copy is still served, as during the outage, never a miss
    assert cache.get("kept") == "v1"
    # And once Redis is back, the copy is checked against it before it is served from memory again
    private_redis.start()
    assert wait_until(lambda: cache.stats().breaker == "closed" and cache.get("kept") == "v1", timeout=15)


def test_a_fetch_with_redis_down_calls_the_loader_and_never_raises(make_cache, private_redis):
    # Given a cache whose Redis is down
    cache = make_cache(private_redis.url, **OUTAGE)
    private_redis.stop()
    calls = []

    def load():
        calls.append(1)
        return {"n": len(calls)}

    # When a key is fetched twice
    first = cache.fetch("k", load)
    second = cache.fetch("k", load)
    # Then the loader ran once (its value kept in process) and the cache reports itself degraded
    assert first == second == {"n": 1}
    assert len(calls) == 1
    assert cache.health().status == "degraded"


def test_a_delete_made_while_redis_is_down_reaches_the_other_processes_when_it_is_back(make_cache, private_redis):
    # Given two caches (two processes' worth) holding "user:1"
    a = make_cache(private_redis.url, **OUTAGE)
    b = make_cache(private_redis.url, **OUTAGE)
    a.put("user:1", "old")
    assert b.get("user:1") == "old"
    # When Redis stops, A deletes the key, and Redis starts again
    private_redis.stop()
    assert wait_until(lambda: a.delete("user:1") is False and a.health().status == "degraded", timeout=10)
    assert a.health().pending_invalidations >= 1
    private_redis.start()
    # Then the delete is replayed: B no longer sees the old value and A has nothing pending
    assert wait_until(lambda: b.get("user:1") is None, timeout=15)
    assert wait_until(lambda: a.health().pending_invalidations == 0, timeout=15)


def test_invalidations_past_the_pending_limit_fold_into_a_namespace_bump_and_none_is_lost(make_cache, private_redis):
    # Given two caches holding three keys of "prices", and room for 2 pending invalidations
    a = make_cache(private_redis.url, **OUTAGE, max_pending_invalidations=2)
    b = make_cache(private_redis.url, **OUTAGE)
    for k in ("p1", "p2", "p3"):
        a.namespace("prices").put(k, k)
        assert b.namespace("prices").get(k) == k
    b.put("other", "kept")
    # When Redis stops and A deletes all three keys
    private_redis.stop()
    for k in ("p1", "p2", "p3"):
        a.namespace("prices").delete(k)
    # Then the three deletes were folded into one pending bump of "prices"
    assert a.health().pending_invalidations == 1 and a.core.pending.collapsed == 1
    # And when Redis is back, B no longer serves any of them, while other namespaces are untouched
    private_redis.start()
    for k in ("p1", "p2", "p3"):
        assert wait_until(lambda k=k: b.namespace("prices").get(k) is None, timeout=15)
    assert b.get("other") == "kept"


def test_the_shared_tiers_breaker_state_is_a_telemetry_gauge(data_dir, private_redis, unique):
    from esf.cache import create_cache
    from esf.settings import CacheSettings, Settings, TelemetrySettings
    from esf.telemetry import create_telemetry

    # Given a cache reporting to telemetry
    settings = Settings(data_dir=str(data_dir), redis_url=private_redis.url,
                        cache=CacheSettings(redis_prefix=f"t{unique}:", **OUTAGE),
                        telemetry=TelemetrySettings(store="none"))
    telemetry = create_telemetry(settings)
    cache = create_cache(settings, telemetry=lambda: telemetry)
    try:
        cache.put("k", 1)
        # When Redis stops and reads fail over to the in-process tier
        private_redis.stop()
        assert wait_until(lambda: cache.get("missing") is None and cache.health().breaker == "open", timeout=10)
        # Then the gauge esf.breaker.state{breaker=cache.redis} reads 1 (open)
        series = telemetry.snapshot("esf.breaker", cluster=False)["metrics"]["esf.breaker.state"]["series"]
        assert [s["value"] for s in series if s["labels"] == {"breaker": "cache.redis"}] == [1]
    finally:
        cache.close()
        telemetry.close()


def test_with_redis_down_threads_missing_the_same_key_run_the_loader_once(make_cache, private_redis):
    import threading
    import time

    # Given a cache whose Redis is down, and 8 threads missing the same key at once
    cache = make_cache(private_redis.url, **OUTAGE)
    private_redis.stop()
    assert wait_until(lambda: cache.get("warm-up") is None and cache.health().status == "degraded", timeout=10)
    calls, results = [], []
    start = threading.Barrier(8)

    def load():
        calls.append(1)
        time.sleep(0.3)
        return "v"

    def run():
        start.wait()
        results.append(cache.fetch("k", load))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then the loader ran once in this process and every thread got its value
    assert len(calls) == 1 and results == ["v"] * 8
