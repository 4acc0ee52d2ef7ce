"""The configuration store (a private Redis) crashes while batches are written, then comes back.

Three reader processes' worth of services (each its own ConfigService with its subscriber thread,
in this process) record every version they apply in the ledger, and whether the snapshot they
serve at that moment holds the batch whole (``a == b == c``). The writer writes batches that set
the three paths together; a batch whose update raised was refused, not half applied.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

import esf
from esf.errors import ServiceUnavailable
from esf.foundation import Foundation
from tests.jobs.harness import wait_for
from tests.servers import PrivateRedis

from .ledger import Ledger, record_effect, settle

pytestmark = pytest.mark.slow

BATCHES = 60
READERS = 3
DOWN_S = 2.0


def test_batches_written_through_a_config_store_crash_are_never_seen_half_and_every_node_converges(
        private_redis: PrivateRedis, ledger_url: str, tmp_path: Path) -> None:
    ledger_client = redis.Redis.from_url(ledger_url)
    scenario = "config-store-crash"

    def node(name: str) -> Foundation:
        return Foundation(esf.Settings.from_env({
            "ESF_REDIS_URL": private_redis.url, "ESF_DATA_DIR": str(tmp_path / name), "ESF_NODE": name,
            "ESF_TELEMETRY_ENABLED": "false", "ESF_CONFIG_STORE_TIMEOUT_S": "1",
            "ESF_CONFIG_RECONCILE_INTERVAL_S": "1", "ESF_EVENTS_RECORD_JOB_EVENTS": "false"}))

    writer = node("writer")
    readers = [node(f"reader-{i}") for i in range(READERS)]
    try:
        writer.config.update_batch({"a": 0, "b": 0, "c": 0})
        for i, fnd in enumerate(readers):
            def seen(change: object, fnd: Foundation = fnd, i: int = i) -> None:
                snap = (fnd.config.get("a"), fnd.config.get("b"), fnd.config.get("c"))
                if len(set(snap)) != 1:
                    ledger_client.sadd(f"{scenario}:partial", f"reader-{i}:{snap}")
                record_effect(ledger_client, scenario, f"reader-{i}:{snap[0]}")

            fnd.config.subscribe("", seen)
        ledger = Ledger(ledger_client, scenario)
        committed: list[int] = []
        refused = 0
        crashed_at = BATCHES // 3
        # When batches are written, and the store crashes (SIGKILL) a third of the way through for DOWN_S
        for k in range(1, BATCHES + 1):
            if k == crashed_at:
                private_redis.kill()
                down_until = time.monotonic() + DOWN_S
            if k > crashed_at and private_redis.proc is None and time.monotonic() >= down_until:
                private_redis.start()
                ledger.fault_ended()
            try:
                writer.config.update_batch({"a": k, "b": k, "c": k})
            except ServiceUnavailable:
                refused += 1  # refused: the caller knows, nothing was applied
            else:
                committed.append(k)
                ledger.sent(*(f"reader-{i}:{k}" for i in range(READERS)))
            time.sleep(0.1)  # 10 batches a second: the outage spans about 20 of them
        if private_redis.proc is None:
            private_redis.start()
            ledger.fault_ended()
        # Then every reader converges on the last committed batch
        last = committed[-1]
        wait_for(lambda: all(r.config.get("a") == last for r in readers), timeout=60,
                 message="every reader at the last batch")
        settle(ledger, timeout=30)
        # And no process ever served a batch in part
        partial = ledger_client.smembers(f"{scenario}:partial")
        assert not partial, f"snapshots holding part of a batch: {sorted(partial)[:5]}"
        assert writer.config.get("a") == writer.config.get("b") == writer.config.get("c") == last
        ledger.report(allow_duplicates=False, refused=refused, readers=READERS)
    finally:
        for fnd in (writer, *readers):
            fnd.close()
