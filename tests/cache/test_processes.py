"""Coherence and stampede protection across real processes sharing one Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.cache.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Node:
    """One cache process (tests/cache/node.py)."""

    def __init__(self, redis_url: str, prefix: str, **options) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cache.node", redis_url, prefix, json.dumps(options)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self):
        line = self.proc.stdout.readline()
        assert line, "the cache process exited"
        return json.loads(line)["result"]

    def call(self, **cmd):
        self.send(**cmd)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def nodes(redis_url, unique):
    started: list[Node] = []
    prefix = f"t{unique}:"

    def start(n: int, **options) -> list[Node]:
        new = [Node(redis_url, prefix, **options) for _ in range(n)]
        started.extend(new)
        return new

    start.prefix = prefix
    yield start
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def test_a_put_on_one_process_replaces_the_in_process_copies_of_the_others(nodes):
    # Given three processes that hold "price" in their in-process tier (revalidated only every 30 s)
    a, b, c = nodes(3, coherence_s=30.0)
    assert a.call(op="put", key="price", value=10) is True
    assert b.call(op="get", key="price") == 10 and c.call(op="get", key="price") == 10
    assert b.call(op="get", key="price") == 10  # served in-process now
    # When A puts a new value
    a.call(op="put", key="price", value=11)
    # Then B and C serve it within a second (pub/sub eviction, far inside the 30 s revalidation)
    assert wait_until(lambda: b.call(op="get", key="price") == 11, timeout=1.0)
    assert wait_until(lambda: c.call(op="get", key="price") == 11, timeout=1.0)
    # And a delete and a namespace bump reach them the same way
    a.call(op="delete", key="price")
    assert wait_until(lambda: b.call(op="get", key="price") is None, timeout=1.0)
    a.call(op="put", key="sku", value=1, namespace="prices")
    assert c.call(op="get", key="sku", namespace="prices") == 1
    a.call(op="bump", namespace="prices")
    assert wait_until(lambda: c.call(op="get", key="sku", namespace="prices") is None, timeout=1.0)


def test_a_lost_invalidation_leaves_a_stale_copy_no_longer_than_the_coherence_bound(nodes, redis_url):
    # Given two processes holding "limit" in-process, revalidated every 0.5 s
    a, b = nodes(2, coherence_s=0.5)
    a.call(op="put", key="limit", value=1)
    assert b.call(op="get", key="limit") == 1
    assert b.call(op="get", key="limit") == 1
    assert b.call(op="stats")["namespaces"]["default"]["local_hits"] == 1
    # When the shared entry changes without any message (as when a message is lost)
    client = redis.Redis.from_url(redis_url)
    data_key = f"{nodes.prefix}d:default:0:limit"
    raw = client.get(data_key)
    header = raw.rsplit(b":", 1)[0]
    client.set(data_key, header + b":2", px=60_000)
    changed_at = time.monotonic()
    # Then B serves the new value within the bound (0.5 s, plus the time to ask)
    assert wait_until(lambda: b.call(op="get", key="limit") == 2, timeout=3.0)
    assert time.monotonic() - changed_at < 1.5


def test_a_lost_namespace_bump_is_noticed_within_the_coherence_bound(nodes, redis_url):
    # Given two processes holding "sku" of "prices" in process, revalidated every 0.5 s
    a, b = nodes(2, coherence_s=0.5)
    a.call(op="put", key="sku", value=1, namespace="prices")
    assert b.call(op="get", key="sku", namespace="prices") == 1
    # When the namespace version is bumped without any message (as when the message is lost)
    redis.Redis.from_url(redis_url).incr(f"{nodes.prefix}v:prices")
    bumped_at = time.monotonic()
    # Then B stops serving the old version's value within the bound
    assert wait_until(lambda: b.call(op="get", key="sku", namespace="prices") is None, timeout=3.0)
    assert time.monotonic() - bumped_at < 1.5


def test_fifty_concurrent_misses_across_four_processes_run_the_loader_once(nodes, redis_url):
    # Given four processes
    procs = nodes(4)
    client = redis.Redis.from_url(redis_url)
    start_at = time.time() + 1.0
    # When 50 fetches of one key start together (13+13+12+12 threads), with a loader taking 0.3 s
    for i, node in enumerate(procs):
        node.send(op="fetch", key="report", value={"rows": 3}, sleep=0.3, threads=13 if i < 2 else 12,
                  start_at=start_at)
    results = [r for node in procs for r in node.answer()]
    # Then every fetch got the value and the loader ran once
    assert len(results) == 50 and all(r == {"rows": 3} for r in results), results
    assert int(client.get(f"{nodes.prefix}test:loads")) == 1
    waits = sum(node.call(op="stats")["namespaces"]["default"]["stampede_waits"] for node in procs)
    assert waits >= 1


@pytest.mark.slow
def test_a_sigkilled_lock_holder_does_not_block_the_others_past_its_lease(nodes, redis_url):
    # Given a process whose loader holds the lock (lease 1 s) and hangs
    holder, *waiters = nodes(4, lock_lease_s=1.0, stampede_wait_s=30.0)
    client = redis.Redis.from_url(redis_url)
    holder.send(op="fetch", key="slow", value="from holder", sleep=120)
    assert wait_until(lambda: client.get(f"{nodes.prefix}test:loading") is not None, timeout=10)
    # And three processes waiting for the same key
    for w in waiters:
        w.send(op="fetch", key="slow", value="from waiter", sleep=0.2)
    # When the holder is SIGKILLed
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait()
    killed_at = time.monotonic()
    results = [r for w in waiters for r in w.answer()]
    # Then every waiter got the value loaded once more by one of them, soon after the lease ran out
    assert results == ["from waiter"] * 3
    assert int(client.get(f"{nodes.prefix}test:loads")) == 2  # the killed holder's call and one waiter's
    assert time.monotonic() - killed_at < 10


@pytest.mark.parametrize("invalidation", ["bump", "delete"])
def test_a_value_loaded_before_an_invalidation_is_returned_but_not_stored(make_cache, redis_url, invalidation):
    import threading

    # Given a fetch on A whose loader has read the old value and is still running
    a, b = make_cache(redis_url), make_cache(redis_url)
    prices_a, prices_b = a.namespace("prices"), b.namespace("prices")
    read_done, release = threading.Event(), threading.Event()
    got = []

    def slow_loader():
        read_done.set()
        assert release.wait(10)
        return "old"

    thread = threading.Thread(target=lambda: got.append(prices_a.fetch("sku", slow_loader)))
    thread.start()
    assert read_done.wait(10)
    # When B invalidates the namespace or the key meanwhile, and then the loader returns
    if invalidation == "bump":
        prices_b.bump()
    else:
        prices_b.delete("sku")
    release.set()
    thread.join(10)
    # Then A's caller got the loaded value, but no process finds it cached: the next fetch loads again
    assert got == ["old"]
    assert prices_b.get("sku") is None
    assert wait_until(lambda: prices_a.get("sku") is None, timeout=2)
    assert prices_a.fetch("sku", lambda: "new") == "new"
