"""Several processes on one store: no lost update, one linear history, convergence, wait="all"."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest

from esf.errors import Timeout

from . import config_workers
from .conftest import eventually

PROCS = 4
UPDATES = 25


def _lagging(svc, version):
    try:
        svc.wait_applied(version, timeout=0.5)
    except Timeout as exc:
        return exc.details["nodes"]
    return []


def _join(procs):
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def test_concurrent_updaters_leave_one_linear_history_with_no_lost_update(spec, make_service):
    # Given four processes (spawned) on one store
    ctx = multiprocessing.get_context("spawn")
    results, final = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=config_workers.updater,
            args=(spec.kind, spec.location, spec.prefix, i, UPDATES, results, final),
        )
        for i in range(PROCS)
    ]
    for p in procs:
        p.start()
    try:
        # When each does 25 plain updates of its own counter and 25 CAS increments of a shared one
        done = [results.get(timeout=240) for _ in range(PROCS)]
        assert sorted(d[1] for d in done) == list(range(PROCS))
        observer = make_service()
        total = PROCS * UPDATES * 2
        for _ in range(PROCS):
            final.put(total)
        finals = [results.get(timeout=120) for _ in range(PROCS)]
    finally:
        _join(procs)
    # Then the version rose by exactly one per batch and no increment was lost
    eventually(lambda: observer.version == total, what="observer at the final version")
    history = observer.history(limit=total + 10)
    assert [e.version for e in history] == list(range(total, 0, -1))
    # And every process converged on the same version and content
    expected = {"own": {f"p{i}": UPDATES for i in range(PROCS)}, "shared": PROCS * UPDATES}
    for _, index, version, content, seen in finals:
        assert version == total, index
        assert content == expected, index
        assert seen == sorted(seen) and len(set(seen)) == len(seen)


@pytest.mark.slow
def test_wait_all_returns_when_every_live_process_has_applied_and_times_out_naming_a_stalled_one(
    spec, make_service
):
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    # Given two extra processes that apply versions
    procs = [
        ctx.Process(target=config_workers.idler, args=(spec.kind, spec.location, spec.prefix, f"extra-{i}", False,
                                                       ready, stop))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    try:
        writer = make_service(node_id="writer")
        names = {ready.get(timeout=120) for _ in procs}
        assert names == {"extra-0", "extra-1"}
        config_workers.wait_for(lambda: len(writer.nodes()) == 3)
        # When a batch is written with wait="all"
        version = writer.update_batch({"a": 1, "b": 2}, wait="all", timeout=60)
        # Then it returns only once every live process reports the new version
        assert {n.node_id: n.version >= version for n in writer.nodes()} == {
            "writer": True, "extra-0": True, "extra-1": True
        }
        # Given a third process that stalls on its version
        stalled = ctx.Process(
            target=config_workers.idler,
            args=(spec.kind, spec.location, spec.prefix, "stalled", True, ready, stop),
        )
        stalled.start()
        procs.append(stalled)
        assert ready.get(timeout=120) == "stalled"
        config_workers.wait_for(lambda: len(writer.nodes()) == 4)
        # When the next batch waits for everyone
        with pytest.raises(Timeout) as info:
            writer.update_batch({"a": 2}, wait="all", timeout=3)
        # Then the Timeout names the stalled process, and the batch is committed anyway
        assert "stalled" in info.value.details["nodes"]
        assert "stalled" in str(info.value) and "committed" in str(info.value)
        assert writer.get("a") == 2
        # And once the healthy processes have caught up, the stalled one is the only one named
        eventually(lambda: _lagging(writer, writer.version) == ["stalled"], what="only the stalled node lags")
    finally:
        stop.set()
        _join(procs)


def test_wait_all_judges_liveness_by_the_redis_clock_not_the_nodes_clocks(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from esf.plugins.redis_config import RedisConfigStore

    from esf.config import ConfigService, NodeStatus

    from .conftest import FAST

    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    writer = ConfigService(RedisConfigStore(redis_url, prefix=prefix), settings=FAST, data_dir=tmp_path / "w")
    other = RedisConfigStore(redis_url, prefix=prefix)
    try:
        # Given a live node whose clock is an hour behind and which has not applied anything
        now = time.time()
        other.beat(NodeStatus("behind", "h1", 1, 0, now - 3600, now - 3600), FAST.node_ttl_s)
        # Then it is live, and its heartbeat time is the Redis server's, not its own
        [behind] = [n for n in writer.nodes() if n.node_id == "behind"]
        assert abs(behind.last_seen - float(other._client.time()[0])) < 30
        # When a batch is written with wait="all", then the barrier waits for it (and names it)
        with pytest.raises(Timeout) as caught:
            writer.update_batch({"a": 1}, wait="all", timeout=1.0)
        assert caught.value.details["nodes"] == ["behind"]
    finally:
        other.close()
        writer.close()
