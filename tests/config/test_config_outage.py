"""Store down and back (a private redis-server): degrade, serve the last snapshot, resynchronise."""

from __future__ import annotations

import dataclasses

import pytest
from esf.plugins.redis_config import RedisConfigStore

from esf.config import ConfigService
from esf.errors import ServiceUnavailable

from .conftest import FAST, eventually

SETTINGS = dataclasses.replace(FAST, store_timeout_s=1.0)


@pytest.mark.slow
def test_a_store_outage_degrades_reads_keep_working_and_every_node_resyncs_on_return(private_redis, tmp_path):
    def make(node: str, directory: str | None = None) -> ConfigService:
        store = RedisConfigStore(private_redis.url, prefix="esf:config:", timeout_s=SETTINGS.store_timeout_s)
        return ConfigService(store, settings=SETTINGS, data_dir=tmp_path / (directory or node), node_id=node)

    writer, reader = make("writer"), make("reader")
    cold = None
    try:
        writer.update_batch({"a": 1, "b": {"c": True}})
        eventually(lambda: reader.version == 1, what="reader at version 1")
        # When the store goes down
        private_redis.stop()
        # Then reads serve the last snapshot, health says degraded, updates are refused (never dropped)
        assert reader.get("a") == 1 and writer.get("b.c") is True
        health = reader.health()
        assert health.status == "degraded" and not health.store_reachable and health.version == 1
        with pytest.raises(ServiceUnavailable):
            writer.update("a", 2)
        assert writer.version == 1
        # And a process starting cold while the store is down serves the snapshot saved on disk
        cold = make("cold", directory="reader")
        assert cold.version == 1 and cold.get("a") == 1 and cold.health().source == "local-snapshot"
        # When the store comes back and a new version is written
        private_redis.start()
        eventually(lambda: _try_update(writer, "a", 2), what="writer can write again")
        # Then every process resynchronises and reports healthy
        for node in (reader, cold):
            eventually(lambda node=node: node.version == 2 and node.get("a") == 2, what="resync")
            eventually(lambda node=node: node.health().status == "ok", what="healthy again")
        assert cold.health().source == "store"
    finally:
        for svc in (writer, reader, cold):
            if svc is not None:
                svc.close()


def _try_update(svc: ConfigService, path: str, value: object) -> bool:
    try:
        svc.update(path, value)
    except ServiceUnavailable:
        return False
    return True
