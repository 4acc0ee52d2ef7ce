"""The in-process tier's bounds: entries, bytes, and the eviction policy chosen by setting."""

from __future__ import annotations

import pytest

from esf.errors import SettingsError
from esf.settings import CacheSettings, Settings


@pytest.mark.parametrize("policy", ["ttl", "lru", "lfu"])
def test_the_in_process_tier_keeps_at_most_its_entry_bound(make_cache, policy):
    # Given an in-process tier of 10 entries
    cache = make_cache(None, local_policy=policy, local_max_entries=10)
    # When 25 keys are put
    for i in range(25):
        cache.put(f"k{i}", i)
    # Then 10 are kept and 15 evictions were counted
    stats = cache.stats()
    assert stats.local_entries == 10
    assert stats.evictions == 15


def test_the_in_process_tier_keeps_at_most_its_byte_bound(make_cache):
    # Given an in-process tier of 10 000 bytes
    cache = make_cache(None, local_max_bytes=10_000)
    # When 20 values of about 1 000 bytes are put
    for i in range(20):
        cache.put(f"k{i}", "x" * 1000)
    # Then the bytes kept stay under the bound, and the most recent value is kept
    stats = cache.stats()
    assert stats.local_bytes <= 10_000
    assert stats.local_entries < 20
    assert cache.get("k19") == "x" * 1000


def test_lru_evicts_the_least_recently_read_key_and_lfu_the_least_often_read_one(make_cache):
    # Given tiers of 3 entries holding a, b and c
    lru = make_cache(None, local_policy="lru", local_max_entries=3)
    lfu = make_cache(None, local_policy="lfu", local_max_entries=3)
    for cache in (lru, lfu):
        for k in ("a", "b", "c"):
            cache.put(k, k)
    # When b is read often but long ago, then c and a (LRU); a often, c twice, b once but last (LFU)
    for _ in range(5):
        lru.get("b")
    lru.get("c")
    lru.get("a")
    for _ in range(5):
        lfu.get("a")
    lfu.get("c")
    lfu.get("c")
    lfu.get("b")
    # And a fourth key arrives
    lru.put("d", "d")
    lfu.put("d", "d")
    # Then LRU evicted b (least recently read) and LFU evicted b too, though it was read last
    assert lru.get("b") is None and {lru.get("a"), lru.get("c")} == {"a", "c"}
    assert lfu.get("b") is None and {lfu.get("a"), lfu.get("c")} == {"a", "c"}


def test_a_tier_of_zero_entries_keeps_nothing_in_process_but_still_serves_from_redis(make_cache, redis_url):
    cache = make_cache(redis_url, local_max_entries=0)
    cache.put("k", 1)
    assert cache.stats().local_entries == 0
    assert cache.get("k") == 1
    assert cache.stats().namespaces["default"].shared_hits == 1


def test_cache_settings_are_checked_and_read_from_the_environment():
    # When settings come from ESF_CACHE_* variables, Then they are converted; a bad one names the setting
    settings = Settings.from_env({"ESF_CACHE_LOCAL_POLICY": "lfu", "ESF_CACHE_COHERENCE_S": "0.5"})
    assert settings.cache.local_policy == "lfu" and settings.cache.coherence_s == 0.5
    with pytest.raises(SettingsError, match="cache.local_policy"):
        Settings.from_env({"ESF_CACHE_LOCAL_POLICY": "random"})
    with pytest.raises(SettingsError, match="cache.lock_lease_s"):
        CacheSettings(lock_lease_s=0)
