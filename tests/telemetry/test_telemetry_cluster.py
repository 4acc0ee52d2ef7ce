"""The cluster-wide view: processes push deltas to a shared store and their figures add up."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
from _telemetry_cluster_worker import PER_CHILD, PER_WORKER, make_store, samples_for, worker_main

from esf.telemetry import RedisSnapshotStore, SQLiteSnapshotStore, Telemetry
from esf.telemetry._aggregate import PushBatch, Rules, render


@pytest.fixture(params=["redis", "sqlite"])
def store_target(request, tmp_path):
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url")
    return "sqlite", str(tmp_path / "telemetry.sqlite3")


def test_counts_add_up_exactly_across_two_workers_with_two_prefork_children_each(store_target):
    # Given two worker processes (spawned) that each fork two children, all emitting to one store
    kind, target = store_target
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=worker_main, args=(kind, target, w, 2)) for w in range(2)]
    for p in workers:
        p.start()
    try:
        for p in workers:
            p.join(120)
            assert p.exitcode == 0
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
    # When the cluster snapshot is read from another process
    reader = Telemetry(store=make_store(kind, target))
    try:
        snap = reader.snapshot("test.")
    finally:
        reader.close()
    # Then every increment of every (finished) process is counted exactly once
    assert snap["scope"] == "cluster"
    done = snap["metrics"]["test.jobs.done"]["series"][0]
    assert done["value"] == 2 * PER_WORKER + 4 * PER_CHILD
    hist = snap["metrics"]["test.jobs.seconds"]["series"][0]
    assert hist["count"] == 4 * PER_CHILD
    # And the merged percentiles are within the bucket error of numpy over all samples
    every = [v for w in range(2) for c in range(2) for v in samples_for(w, c)]
    assert hist["sum"] == pytest.approx(sum(every), rel=1e-9)
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(every, q, method="lower"))
        assert abs(hist[f"p{round(q * 100)}"] - exact) / exact <= hist["relative_error"] + 1e-12
    # And the gauges of exited processes no longer count
    assert "test.children" not in snap["metrics"]


def _batch(proc, seq, counters=None, gauges=None, when=None, final=False, meta=None):
    when = time.time() if when is None else when
    b = PushBatch(proc=proc, seq=seq, time=when, window_start=int(when // 5) * 5, final=final)
    b.meta = meta or {}
    b.counters = counters or {}
    b.gauges = gauges or {}
    return b


META = {
    "c1": '{"k": "counter", "n": "t.c", "l": []}',
    "g1": '{"k": "gauge", "n": "t.g", "l": []}',
}


def _stores(kind, target):
    return RedisSnapshotStore(target) if kind == "redis" else SQLiteSnapshotStore(target)


def test_a_retried_batch_is_applied_once(store_target):
    # Given a store and a batch that was applied
    kind, target = store_target
    store = _stores(kind, target)
    try:
        b = _batch("p1", 1, counters={"c1": 5}, meta=META)
        store.push(b)
        # When the same batch is pushed again (its reply was lost, say)
        store.push(b)
        store.push(_batch("p1", 2, counters={"c1": 1}))
        # Then its increments count once
        view = store.read(300)
        assert view.states["c1"].value == 6
    finally:
        store.close()


def test_gauges_merge_by_the_configured_rule_and_vanish_when_their_process_closes(store_target):
    kind, target = store_target
    store = _stores(kind, target)
    try:
        store.push(_batch("p1", 1, gauges={"g1": 3}, meta=META))
        store.push(_batch("p2", 1, gauges={"g1": 5}))
        rules = Rules()
        view = store.read(300)
        assert [s.value for s in render(view.states, view.windows, rules, time.time())] == [8]
        rules.set("t.", rules.for_name("t.").__class__(gauge_merge="max"))
        assert [s.value for s in render(view.states, view.windows, rules, time.time())] == [5]
        assert sorted(view.processes) == ["p1", "p2"]
        # When p2 closes
        store.push(_batch("p2", 2, final=True))
        view = store.read(300)
        assert view.states["g1"].gauge_values == [3]
        assert view.processes == ["p1"]
    finally:
        store.close()


def test_rates_over_sliding_windows_come_from_time_buckets(store_target):
    # Given 30 increments pushed 20 s ago and 600 pushed 4 minutes ago
    kind, target = store_target
    store = _stores(kind, target)
    now = time.time()
    try:
        store.push(_batch("p1", 1, counters={"c1": 600}, meta=META, when=now - 240))
        store.push(_batch("p1", 2, counters={"c1": 30}, when=now - 20))
        view = store.read(300)
        (sample,) = render(view.states, view.windows, Rules(), now)
        # Then the 1-minute rate sees only the recent ones, the 5-minute rate both
        assert sample.value == 630
        assert sample.rates == {"1m": pytest.approx(30 / 60), "5m": pytest.approx(630 / 300)}
    finally:
        store.close()


def test_an_unreachable_store_degrades_to_the_local_view_and_keeps_the_increments_for_later(redis_url):
    # Given a Telemetry whose Redis cannot be reached
    tel = Telemetry(store=RedisSnapshotStore("redis://127.0.0.1:1/0", timeout_s=0.2))
    try:
        tel.counter("t.kept").inc(4)
        # When it pushes and snapshots
        assert tel.flush() is False
        snap = tel.snapshot()
        # Then the snapshot is local, says it is degraded, and health reports the store
        assert snap["scope"] == "local"
        assert "unavailable" in snap["degraded"]
        assert tel.health()["store"]["ok"] is False
        assert tel.health()["store"]["pending_batch"] is True
        # When the store comes back (here: another store), the same pending batch is delivered
        tel._pusher.store = RedisSnapshotStore(redis_url)
        assert tel.flush() is True
        assert tel.snapshot()["metrics"]["t.kept"]["series"][0]["value"] == 4
    finally:
        tel.close()


def test_a_forked_child_starts_from_zero_with_its_own_process_id_and_thread():
    # Given a process with a counter resolved and incremented before forking
    tel = Telemetry(store=None)
    counter = tel.counter("fork.count")
    counter.inc(5)
    parent_id = tel.proc_id
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            ok = counter.value == 0 and tel.proc_id != parent_id and tel._pusher.thread is None
            counter.inc()
            tel.counter("fork.other")  # the first lookup starts the child's own thread
            ok = ok and counter.value == 1 and tel._pusher.thread is not None and tel._pusher.thread.is_alive()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        os.waitpid(pid, 0)
        # Then the child saw zeroed series, a new process id and a running thread; the parent kept its count
        assert os.read(r, 1) == b"1"
        assert counter.value == 5
    finally:
        os.close(r)
        tel.close()
