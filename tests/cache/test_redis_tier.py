"""The Redis shared tier on its own: what the SharedTier interface promises, call by call."""

from __future__ import annotations

import threading

import pytest
from esf.plugins.redis_cache import RedisCacheTier

from esf.cache import Invalidation
from esf.errors import ServiceUnavailable
from tests.cache.conftest import wait_until


@pytest.fixture
def tier(redis_url, unique):
    t = RedisCacheTier(redis_url, prefix=f"t{unique}:", timeout_s=0.5)
    yield t
    t.close()


def _msg(key="k"):
    return Invalidation("delete", "ns", "test-origin", key=key)


def test_entries_live_under_the_namespace_version_and_a_bump_hides_them(tier):
    # Given an entry written under version 0
    assert tier.version("ns") == 0
    assert tier.write("ns", "k", b"v0", 60, _msg()) == 0
    assert tier.get("ns", 0, "k") == b"v0"
    # When the namespace is bumped
    assert tier.bump("ns", "test-origin") == 1
    # Then the entry is not under the new version, and new writes go there
    assert tier.get("ns", 1, "k") is None
    assert tier.write("ns", "k", b"v1", 60, _msg()) == 1
    assert tier.get("ns", 1, "k") == b"v1"
    assert tier.namespaces() == {"ns": 1}


def test_a_conditional_write_is_refused_after_a_bump_or_when_the_lock_is_not_the_writers(tier):
    # A write expecting an old version is refused and stores nothing
    tier.bump("ns", "o")
    assert tier.write("ns", "k", b"x", 60, _msg(), if_version=0) is None
    assert tier.get("ns", 1, "k") is None
    # A write under a lock held by another token is refused; by its own token it is stored
    assert tier.acquire("l:ns:k", "mine", 10)
    assert tier.write("ns", "k", b"x", 60, _msg(), if_lock=("l:ns:k", "theirs")) is None
    assert tier.write("ns", "k", b"x", 60, _msg(), if_version=1, if_lock=("l:ns:k", "mine")) == 1
    # A delete frees the key's loader lock, so the holder's next write is refused
    tier.delete("ns", "k", _msg())
    assert tier.get("ns", 1, "k") is None
    assert tier.write("ns", "k", b"late", 60, _msg(), if_lock=("l:ns:k", "mine")) is None


def test_a_lock_is_exclusive_released_only_by_its_token_and_freed_by_its_lease(tier):
    assert tier.acquire("l:a", "t1", 0.3)
    assert not tier.acquire("l:a", "t2", 0.3)
    tier.release("l:a", "t2")  # not the holder: no effect
    assert not tier.acquire("l:a", "t2", 0.3)
    assert wait_until(lambda: tier.acquire("l:a", "t2", 10), timeout=3)  # the lease ran out
    tier.release("l:a", "t2")
    assert tier.acquire("l:a", "t3", 10)


def test_watch_delivers_each_message_after_announcing_the_subscription(tier):
    received = []
    stop = threading.Event()
    thread = threading.Thread(target=tier.watch, args=(received.append, stop, lambda: None))
    thread.start()
    try:
        assert wait_until(lambda: None in received, timeout=5)
        tier.write("ns", "k", b"v", 60, _msg("k"))
        tier.delete("ns", "j", _msg("j"))
        tier.bump("ns", "o")
        assert wait_until(lambda: len(received) == 4, timeout=5)
    finally:
        stop.set()
        thread.join(5)
    assert received[0] is None
    assert [(m.op, m.key, m.version) for m in received[1:]] == [("delete", "k", None), ("delete", "j", None),
                                                                 ("bump", None, 1)]


def test_every_call_raises_service_unavailable_when_redis_is_unreachable(unique):
    from tests.servers import free_port

    tier = RedisCacheTier(f"redis://127.0.0.1:{free_port()}/0", prefix=f"t{unique}:", timeout_s=0.2)
    try:
        for call in (lambda: tier.version("ns"), lambda: tier.get("ns", 0, "k"), lambda: tier.bump("ns", "o"),
                     lambda: tier.write("ns", "k", b"v", 1, _msg()), lambda: tier.acquire("l", "t", 1)):
            with pytest.raises(ServiceUnavailable):
                call()
    finally:
        tier.close()
