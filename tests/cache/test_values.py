"""The cache's calls on one process: values, namespaces, limits and bad input (both backends)."""

from __future__ import annotations

import pytest

from esf.errors import PayloadTooLarge, SerializationError, ValidationError
from tests.cache.conftest import wait_until


@pytest.fixture(params=["local", "redis"])
def cache(request, make_cache):
    # Given a cache on the in-process tier alone, or in front of the Redis tier
    if request.param == "local":
        return make_cache(None)
    return make_cache(request.getfixturevalue("redis_url"))


def test_a_value_put_is_got_back_and_a_deleted_one_is_gone(cache):
    # When a value is put, then deleted
    assert cache.put("user:1", {"name": "Ada", "roles": ["admin"]}) is True
    got = cache.get("user:1")
    cache.delete("user:1")
    # Then it was read back equal, and is absent afterwards (the default is returned)
    assert got == {"name": "Ada", "roles": ["admin"]}
    assert cache.get("user:1", "absent") == "absent"


def test_cached_values_are_read_only_so_one_caller_cannot_change_another_callers_copy(cache):
    # Given a cached dict
    cache.put("cfg", {"limits": [1, 2]})
    value = cache.get("cfg")
    # When a caller tries to change it, Then that fails and the cached value is unchanged
    with pytest.raises(TypeError):
        value["limits"] = []
    with pytest.raises(TypeError):
        value["limits"].append(3)
    assert cache.get("cfg") == {"limits": [1, 2]}


def test_fetch_calls_the_loader_on_a_miss_only(cache):
    calls = []

    def load():
        calls.append(1)
        return 42

    # When the same key is fetched twice
    first = cache.fetch("answer", load, ttl=30)
    second = cache.fetch("answer", load, ttl=30)
    # Then the loader ran once and both calls got its value
    assert (first, second, len(calls)) == (42, 42, 1)


def test_an_entry_is_gone_after_its_ttl(cache):
    # Given an entry with a ttl of 0.2 s
    cache.put("short", "v", ttl=0.2)
    assert cache.get("short") == "v"
    # Then it expires
    assert wait_until(lambda: cache.get("short") is None, timeout=5)


def test_a_namespace_bump_invalidates_every_key_of_that_namespace_only(cache):
    # Given keys in two namespaces
    prices = cache.namespace("prices")
    prices.put("sku-1", 10)
    prices.put("sku-2", 20)
    cache.put("sku-1", "default namespace")
    # When the prices namespace is bumped
    prices.bump()
    # Then its keys are gone and the other namespace's key is intact
    assert prices.get("sku-1") is None and prices.get("sku-2") is None
    assert cache.get("sku-1") == "default namespace"
    # And new values are stored under the new version
    prices.put("sku-1", 11)
    assert prices.get("sku-1") == 11


@pytest.mark.parametrize("key", ["", "a\nb", "tab\tkey", "x" * 513, 12, None, b"bytes"])
def test_a_bad_key_is_refused_with_validation_error(cache, key):
    # When a bad key is used, Then every call raises ValidationError
    with pytest.raises(ValidationError):
        cache.put(key, 1)
    with pytest.raises(ValidationError):
        cache.get(key)
    with pytest.raises(ValidationError):
        cache.fetch(key, lambda: 1)
    with pytest.raises(ValidationError):
        cache.delete(key)


def test_a_value_over_the_size_limit_is_refused_and_nothing_is_stored(make_cache, redis_url):
    # Given a limit of 1000 bytes per value and an existing entry
    cache = make_cache(redis_url, max_value_bytes=1000)
    cache.put("big", "small")
    # When a value over the limit is put
    with pytest.raises(PayloadTooLarge) as info:
        cache.put("big", "x" * 2000)
    # Then the error is a ValidationError with a stable code, and the old value is unchanged
    assert isinstance(info.value, ValidationError) and info.value.code == "payload_too_large"
    assert cache.get("big") == "small"
    # And a loader returning a value over the limit raises too, without storing it
    with pytest.raises(PayloadTooLarge):
        cache.fetch("loaded", lambda: "y" * 2000)
    assert cache.get("loaded") is None


def test_a_value_that_is_not_json_is_refused(cache):
    # When values that are not JSON are put, Then they are refused with SerializationError (a ValidationError)
    for bad in ({1, 2}, b"bytes", float("nan"), object()):
        with pytest.raises(SerializationError):
            cache.put("bad", bad)
    assert cache.get("bad") is None


@pytest.mark.parametrize("ttl", [0, -1, "10", True])
def test_a_bad_ttl_is_refused_before_anything_is_stored_or_loaded(cache, ttl):
    calls = []
    with pytest.raises(ValidationError):
        cache.put("k", 1, ttl=ttl)
    with pytest.raises(ValidationError):
        cache.fetch("k", lambda: calls.append(1), ttl=ttl)
    assert cache.get("k") is None and calls == []


def test_a_bad_namespace_name_is_refused(cache):
    for name in ("", "with space", "a/b", "x" * 65):
        with pytest.raises(ValidationError):
            cache.namespace(name)


def test_refresh_after_needs_a_loader_a_worker_can_call(cache):
    # When refresh_after is given with an anonymous loader, Then it is refused before the loader runs
    with pytest.raises(ValidationError, match="registered loader"):
        cache.fetch("k", lambda: 1, refresh_after=5)
    # And an unknown loader name is refused
    with pytest.raises(ValidationError, match="no cache loader"):
        cache.fetch("k", "no.such.loader")


def test_a_registered_loader_is_called_with_the_key(cache):
    @cache.loader("users.by_key")
    def load(key):
        return {"key": key}

    assert cache.fetch("u-7", "users.by_key") == {"key": "u-7"}


def test_cached_function_results_are_cached_per_arguments(cache):
    calls = []

    @cache.cached(ttl=30, namespace="perms")
    def permissions(user_id, scope="read"):
        calls.append((user_id, scope))
        return [f"{scope}:{user_id}"]

    # When the function is called twice with the same arguments and once with others
    assert permissions(1) == ["read:1"]
    assert permissions(1) == ["read:1"]
    assert permissions(2, scope="write") == ["write:2"]
    # Then it ran once per distinct call; bumping its namespace makes it run again
    assert calls == [(1, "read"), (2, "write")]
    permissions.cache_namespace.bump()
    permissions(1)
    assert calls[-1] == (1, "read") and len(calls) == 3


def test_stale_on_error_serves_the_last_good_value_when_the_loader_fails(cache):
    # Given a value that has expired (but is kept for stale_on_error)
    cache.put("rate", 1.25, ttl=0.1)
    assert wait_until(lambda: cache.get("rate") is None, timeout=5)

    def failing():
        raise ConnectionError("rates API down")

    # When the loader fails, Then stale_on_error serves the last good value, and without it the error propagates
    assert cache.fetch("rate", failing, stale_on_error=True) == 1.25
    with pytest.raises(ConnectionError):
        cache.fetch("rate", failing)
    assert cache.stats().namespaces["default"].stale_served == 1


def test_an_entry_that_cannot_be_decoded_is_a_miss_that_the_loader_replaces(make_cache, redis_url, unique):
    # Given a shared entry written by a foreign writer in a format the codec cannot read
    import redis

    cache = make_cache(redis_url)
    redis.Redis.from_url(redis_url).set(f"t{unique}:d:default:0:odd", b"not-a-header")
    # When it is fetched, Then it is a miss: the loader's value is served and stored
    assert cache.fetch("odd", lambda: "fresh") == "fresh"
    assert cache.get("odd") == "fresh"


def test_threads_missing_the_same_key_at_once_run_the_loader_once_in_this_process(cache):
    import threading

    # Given 10 threads that miss the same key together, with a loader taking 0.3 s
    calls, results = [], []
    start = threading.Barrier(10)

    def load():
        calls.append(1)
        import time

        time.sleep(0.3)
        return {"report": 1}

    def run():
        start.wait()
        results.append(cache.fetch("report", load))

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then the loader ran once and every thread got its value (embedded mode too)
    assert len(calls) == 1
    assert results == [{"report": 1}] * 10


def test_a_loader_error_reaches_every_thread_waiting_for_it_and_nothing_is_stored(cache):
    import threading

    start = threading.Barrier(5)
    errors = []

    def load():
        import time

        time.sleep(0.2)
        raise ConnectionError("source down")

    def run():
        start.wait()
        try:
            cache.fetch("broken", load)
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 5
    assert cache.get("broken") is None
