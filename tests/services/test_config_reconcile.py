"""`esf.config.reconcile`: a process that stays behind is republished to and recorded once; gone ones are cleared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.config import NodeStatus
from esf.foundation import Foundation
from tests.jobs.harness import wait_for


@pytest.fixture(params=["redis", "sqlite"])
def fnd(request: pytest.FixtureRequest, data_dir: Path, unique: str) -> Iterator[Foundation]:
    env = {"ESF_DATA_DIR": str(data_dir), "ESF_BROKER_URL": "memory://", "ESF_CONFIG_DIVERGED_AFTER_S": "0.2",
           "ESF_CONFIG_NODE_TTL_S": "3", "ESF_CONFIG_HEARTBEAT_INTERVAL_S": "0.5",
           "ESF_CONFIG_REDIS_PREFIX": f"esf-test-{unique}:"}  # pub/sub channels are global: a prefix of its own
    if request.param == "redis":
        env["ESF_REDIS_URL"] = request.getfixturevalue("redis_url")
    f = Foundation(esf.Settings.from_env(env))
    try:
        yield f
    finally:
        f.close()


def test_a_process_that_stays_behind_is_republished_to_and_recorded_once_and_a_gone_one_is_cleared(
        fnd: Foundation) -> None:
    # Given version 1 committed, a process that beat once and then fell silent for longer than its TTL (3 s),
    # and a live process still at version 0 (liveness is judged by the store's clock, so the silence is real)
    version = fnd.config.update("app.limit", 1)
    store = fnd.config._store
    now = time.time()
    store.beat(NodeStatus("gone", "host-b", 12, version=version, last_seen=now, started_at=now - 20), 3.0)
    wait_for(lambda: "gone" not in {n.node_id for n in store.nodes(3.0)}, timeout=30, message="the silence")
    now = time.time()
    store.beat(NodeStatus("behind", "host-a", 11, version=version - 1, last_seen=now, started_at=now - 5), 3.0)
    pubsub = fnd.redis.pubsub(ignore_subscribe_messages=True) if fnd.settings.redis_url else None
    if pubsub is not None:
        pubsub.subscribe(store.channel)
        wait_for(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, message="subscribed")
    reconcile = fnd.jobs.get("esf.config.reconcile")
    # When the reconcile task runs once the process has been behind longer than config.diverged_after_s
    wait_for(lambda: fnd.config.health().diverged, timeout=30, message="the process counts as diverged")
    first = reconcile()
    second = reconcile()
    # Then it names the process behind, records config.diverged once across runs, and republishes the version
    assert [d["node_id"] for d in first["diverged"]] == ["behind"]
    assert first["republished"] and first["store_version"] == version
    assert [d["event_id"] for d in second["diverged"]] == [d["event_id"] for d in first["diverged"]]
    recorded = fnd.events.query(esf.Q.type("config.diverged"))
    assert [(e.data["node_id"], e.data["version"], e.data["store_version"]) for e in recorded] == [
        ("behind", version - 1, version)]
    if pubsub is not None:
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), timeout=10, message="the republished version")
        assert int(message["data"]) == version
        pubsub.close()
    # And the silent process is cleared from the store, not only hidden
    assert "gone" in first["gone"] and second["gone"] == []
    assert "gone" not in {n.node_id for n in store.nodes(3600.0)}
    assert "behind" in {n.node_id for n in store.nodes(3.0)}
