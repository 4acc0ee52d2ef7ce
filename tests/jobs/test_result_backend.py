"""ESF's Redis result backend: one round trip per stored state, and a success is never overwritten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import BackendStoreError

import esf
from esf.foundation import Foundation
from esf.jobs._celery import EsfRedisBackend


@pytest.fixture
def fnd(redis_url: str, tmp_path: Path) -> Iterator[Foundation]:
    f = Foundation(esf.Settings.from_env({"ESF_BROKER_URL": redis_url, "ESF_REDIS_URL": redis_url,
                                          "ESF_DATA_DIR": str(tmp_path)}))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def backend(fnd: Foundation) -> EsfRedisBackend:
    b = fnd.celery.backend
    assert isinstance(b, EsfRedisBackend)
    return b


def stored(backend: EsfRedisBackend, task_id: str) -> dict[str, Any]:
    raw = backend.client.get(backend.get_key_for_task(task_id))
    assert raw is not None
    meta: dict[str, Any] = json.loads(raw)
    return meta


def count_commands(backend: EsfRedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    client = backend.client
    real = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return real(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return sent


def test_a_result_is_stored_published_and_expires_in_one_round_trip(
    backend: EsfRedisBackend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = redis.Redis.from_url(redis_url).pubsub()
    listener.subscribe(backend.get_key_for_task("job-1"))
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    sent = count_commands(backend, monkeypatch)
    backend.store_result("job-1", {"total": 5}, "SUCCESS")
    assert sent == ["EVALSHA"]
    meta = stored(backend, "job-1")
    assert meta["status"] == "SUCCESS" and meta["result"] == {"total": 5} and meta["task_id"] == "job-1"
    message = listener.get_message(timeout=2)
    assert message is not None and json.loads(message["data"]) == meta
    ttl = backend.client.ttl(backend.get_key_for_task("job-1"))
    assert 0 < ttl <= backend.expires
    assert backend.get_task_meta("job-1")["result"] == {"total": 5}
    listener.close()


def test_a_state_stored_after_a_success_is_dropped(backend: EsfRedisBackend) -> None:
    backend.store_result("job-2", 7, "SUCCESS")
    # A redelivered copy of the job, run again by a worker that lost track of it, fails or starts again
    backend.store_result("job-2", ValueError("second run"), "FAILURE", traceback="Traceback …")
    backend.store_result("job-2", {"pid": 1}, "STARTED")
    assert stored(backend, "job-2")["status"] == "SUCCESS"
    assert backend.get_task_meta("job-2")["result"] == 7


def test_states_before_a_success_are_replaced(backend: EsfRedisBackend) -> None:
    backend.store_result("job-3", {"pid": 1}, "STARTED")
    backend.store_result("job-3", ValueError("boom"), "RETRY", traceback="tb")
    assert stored(backend, "job-3")["status"] == "RETRY"
    backend.store_result("job-3", 9, "SUCCESS")
    assert stored(backend, "job-3")["status"] == "SUCCESS"
    # A failure stored on its own is kept, with the failure expiry
    backend.store_result("job-4", ValueError("boom"), "FAILURE", traceback="tb")
    assert stored(backend, "job-4")["status"] == "FAILURE"
    assert 0 < backend.client.ttl(backend.get_key_for_task("job-4")) <= backend.failure_expires


def test_a_result_mentioning_success_is_not_taken_for_one(backend: EsfRedisBackend) -> None:
    # The script looks for the word first, then decodes: a failure whose message says SUCCESS is no success
    backend.store_result("job-5", ValueError("SUCCESS was expected"), "FAILURE", traceback="tb")
    backend.store_result("job-5", 1, "SUCCESS")
    assert stored(backend, "job-5")["status"] == "SUCCESS"
    # A value that is not JSON at the key (written by something else) is replaced, not an error
    backend.client.set(backend.get_key_for_task("job-6"), b"\xffSUCCESS not json")
    backend.store_result("job-6", 2, "SUCCESS")
    assert stored(backend, "job-6")["result"] == 2


def test_a_result_too_large_for_redis_is_refused_and_nothing_is_stored(
    backend: EsfRedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "_MAX_STR_VALUE_SIZE", 64)
    with pytest.raises(BackendStoreError, match="too large"):
        backend._store_result("job-7", "x" * 100, "SUCCESS")
    assert backend.client.get(backend.get_key_for_task("job-7")) is None


def test_a_script_flushed_from_the_server_is_loaded_again(backend: EsfRedisBackend) -> None:
    backend.store_result("job-8", 1, "SUCCESS")
    backend.client.script_flush()
    backend.store_result("job-9", 2, "SUCCESS")
    assert stored(backend, "job-9")["result"] == 2
