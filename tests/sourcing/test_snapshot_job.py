"""Snapshots are written by the esf.events.snapshot job on a real worker; saving never waits for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env, wait_for

from .domain import SnapshottedAccount


@pytest.fixture
def env(pg_url: str, redis_url: str, data_dir: Path, unique: str) -> dict[str, str]:
    return settings_env(redis_url, queues=(f"q-{unique}",), data_dir=str(data_dir),
                        extra={"ESF_DATABASE_URL": pg_url, "ESF_TELEMETRY_ENABLED": "false"})


@pytest.fixture
def producer(env: dict[str, str]) -> Iterator[Foundation]:
    f = Foundation(esf.Settings.from_env(env))
    try:
        yield f
    finally:
        f.close()


def test_a_save_crossing_snapshot_every_queues_a_snapshot_that_a_worker_writes(
        producer: Foundation, env: dict[str, str], tmp_path: Path) -> None:
    # Given no worker running, an account snapshotted every 5 events saved up to version 7
    account = SnapshottedAccount("w1")
    account.open("ada")
    for amount in range(1, 7):
        account.deposit(amount)
    producer.aggregates.save(account)
    # Then the save returned with its events stored, and no snapshot exists yet: it waits in the queue
    assert producer.events.stream_version("account-w1") == 7  # type: ignore[attr-defined]
    assert producer.events.read_stream("account-w1.snapshots") == []
    # When a worker starts
    worker = Worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        # Then it writes the snapshot of version 7 in the aggregate's snapshot stream
        snaps = wait_for(lambda: producer.events.read_stream("account-w1.snapshots"), timeout=60,
                         message="the snapshot written by the worker")
    finally:
        worker.stop()
    assert [(s.data["aggregate_version"], s.data["schema_version"]) for s in snaps] == [(7, 1)]
    assert snaps[0].data["state"] == {"owner": "ada", "balance": 21, "deposits": 6}
    # And a load starts from it, replaying nothing
    SnapshottedAccount.applied = 0
    loaded = producer.aggregates.load(SnapshottedAccount, "w1")
    assert (SnapshottedAccount.applied, loaded.balance, loaded.version) == (0, 21, 7)
