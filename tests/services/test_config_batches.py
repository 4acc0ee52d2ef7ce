"""Configuration batches handed to the foundation: `update_batch_async`, `schedule_batch`, `esf config scheduled`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import esf
from esf.cli import main
from esf.errors import Conflict, JobFailed, PermissionDenied, ServiceUnavailable, ValidationError
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def env(redis_url: str, pg_url: str, data_dir: Path, unique: str) -> dict[str, str]:
    return settings_env(redis_url, data_dir=str(data_dir), extra={
        "ESF_DATABASE_URL": pg_url, "ESF_WORKERS_PROFILE": "services", "ESF_SERVICES_SCHEDULES": "false",
        "ESF_CONFIG_REDIS_PREFIX": f"esf-test-{unique}:"})  # pub/sub channels are global: a prefix of its own


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    w = Worker(env, tmp_path / "worker.log", concurrency=2, app="tests.services.apps:make")
    try:
        w.wait_ready()
        yield w
    finally:
        w.discard()


@pytest.fixture
def fnd(env: dict[str, str]) -> Iterator[Foundation]:
    f = Foundation(esf.Settings.from_env(env))
    try:
        yield f
    finally:
        f.close()


def ran(fnd: Foundation, batch_id: str) -> bool:
    """The batch's task has finished (its job history shows it)."""
    return any(e.event_type in ("job.succeeded", "job.failed", "job.dead_lettered")
               for e in fnd.events.read_correlation(f"config-batch:{batch_id}"))


def test_a_scheduled_batch_applies_at_its_time_and_not_before(worker: Worker, fnd: Foundation) -> None:
    # Given the configuration at some version, and a batch scheduled 3 s from now with that version
    base = fnd.config.update("billing.retries", 3)
    at = datetime.now(UTC) + timedelta(seconds=3)
    batch = fnd.config.schedule_batch({"billing.retries": 7, "billing.enabled": True}, at=at,
                                      expected_version=base, actor="ops")
    # Then it is listed as pending
    assert [(b.id, b.state) for b in fnd.config.deferred.scheduled()] == [(batch.id, "pending")]
    # When its time has come, Then it is applied once, as one version, not before its time
    wait_for(lambda: fnd.config.get("billing.retries") == 7, timeout=60, message="the batch applied")
    entry = fnd.config.history(1)[0]
    assert entry.version == base + 1 and entry.actor == "ops"
    assert entry.at >= at.timestamp()
    assert fnd.config.get("billing.enabled") is True
    done = wait_for(lambda: (b := fnd.config.deferred.get(batch.id)).state == "applied" and b, timeout=30,
                    message="the batch recorded as applied")
    assert done.version == base + 1
    assert fnd.config.deferred.scheduled() == []


def test_a_scheduled_batch_whose_version_moved_on_is_dead_lettered_with_concurrency_conflict_and_applies_on_replay(
        worker: Worker, fnd: Foundation) -> None:
    # Given a batch scheduled in 2 s against version N, and another change committed meanwhile
    base = fnd.config.update("billing.retries", 3)
    batch = fnd.config.schedule_batch({"billing.retries": 9}, at=datetime.now(UTC) + timedelta(seconds=2),
                                      expected_version=base)
    moved = fnd.config.update("billing.currency", "EUR")
    # When its time comes, Then it is refused: dead-lettered to esf.config.dlq with ConcurrencyConflict
    dlq = fnd.settings.jobs.service_queue("config")
    (entry,) = wait_for(lambda: fnd.jobs.dlq.list(dlq), timeout=60, message="the refused batch in the DLQ")
    assert (entry.job, entry.exception_type, entry.reason) == ("esf.config.apply_batch", "ConcurrencyConflict",
                                                               "non_retryable")
    assert f"expected version {base}" in (entry.exception_message or "")
    assert entry.correlation_id == f"config-batch:{batch.id}"
    refused = fnd.config.deferred.get(batch.id)
    assert refused.state == "refused" and "ConcurrencyConflict" in (refused.error or "")
    assert fnd.config.get("billing.retries") == 3 and fnd.config.version == moved
    # And replayed with the version corrected, it applies
    fnd.jobs.dlq.replay([entry.id], kwargs={**entry.kwargs, "expected_version": moved})
    wait_for(lambda: fnd.config.deferred.get(batch.id).state == "applied", timeout=60, message="applied on replay")
    assert fnd.config.get("billing.retries") == 9 and fnd.config.version == moved + 1


def test_a_cancelled_batch_applies_nothing_and_cannot_be_cancelled_twice(worker: Worker, fnd: Foundation) -> None:
    # Given a batch scheduled in 2 s, cancelled at once
    base = fnd.config.update("billing.retries", 3)
    batch = fnd.config.schedule_batch({"billing.retries": 5}, at=datetime.now(UTC) + timedelta(seconds=2))
    assert fnd.config.deferred.cancel(batch.id).state == "cancelled"
    # When its task runs at its time, Then nothing is applied
    wait_for(lambda: ran(fnd, batch.id), timeout=60, message="the batch's task ran")
    assert fnd.config.version == base and fnd.config.get("billing.retries") == 3
    assert fnd.config.deferred.get(batch.id).state == "cancelled"
    with pytest.raises(Conflict):
        fnd.config.deferred.cancel(batch.id)


def test_update_batch_async_applies_on_a_worker_and_refuses_bad_batches_at_the_call_site(
        worker: Worker, fnd: Foundation) -> None:
    # Given a version; When a batch is handed to a worker, Then its handle gives the new version
    base = fnd.config.update("billing.retries", 3)
    handle = fnd.config.update_batch_async({"billing.retries": 4}, expected_version=base)
    assert handle.wait(timeout=60) == {"version": base + 1}
    assert wait_for(lambda: fnd.config.get("billing.retries") == 4, timeout=30, message="applied here too")
    # And a stale expected version fails the job with ConcurrencyConflict
    stale = fnd.config.update_batch_async({"billing.retries": 5}, expected_version=base)
    with pytest.raises(JobFailed) as failed:
        stale.wait(timeout=60)
    assert failed.value.remote_type == "ConcurrencyConflict"
    # And bad batches are refused before anything is sent
    for bad, error in (({"bad..path": 1}, ValidationError), ({"a": esf.Secret("s3cret")}, ValidationError),
                       ({"a": esf.config.DELETE}, ValidationError), ({"esf.jobs": 1}, PermissionDenied),
                       ({"a": object()}, ValidationError)):
        with pytest.raises(error) as exc:
            fnd.config.update_batch_async(bad)
        assert "s3cret" not in str(exc.value)
    with pytest.raises(ValidationError):
        fnd.config.schedule_batch({"a": 1}, at=datetime.now() + timedelta(seconds=5))  # naive
    assert fnd.config.deferred.scheduled(include_done=True) == []


def test_esf_config_scheduled_lists_shows_and_cancels(fnd: Foundation, env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # Given a batch added from the command line for an hour from now
    changes = tmp_path / "batch.json"
    changes.write_text(json.dumps({"billing.retries": 8}))
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    assert main(["config", "scheduled", "add", str(changes), "--at", at.isoformat()]) == 0
    added = json.loads(capsys.readouterr().out)
    # When it is listed and shown, Then it is pending with its changes and time
    assert main(["config", "scheduled", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["state"], listed["changes"], listed["at"]) == (
        added["id"], "pending", {"billing.retries": 8}, at.isoformat())
    assert main(["config", "scheduled", "show", added["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "pending"
    # And once cancelled it leaves the list; an unknown id is an error with its code
    assert main(["config", "scheduled", "cancel", added["id"]]) == 0
    capsys.readouterr()
    assert main(["config", "scheduled", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["config", "scheduled", "show", "nope"]) == 1
    assert "[not_found]" in capsys.readouterr().err


def test_a_config_service_built_on_its_own_refuses_deferred_batches(data_dir: Path) -> None:
    from esf.config import create_config_service

    service = create_config_service(esf.Settings(data_dir=str(data_dir)))
    try:
        with pytest.raises(ServiceUnavailable):
            service.update_batch_async({"a": 1})
    finally:
        service.close()


def test_a_batch_claimed_by_its_task_can_no_longer_be_cancelled_and_a_cancelled_one_is_not_applied(
        fnd: Foundation) -> None:
    # Given two batches due in an hour (no worker runs them)
    at = datetime.now(UTC) + timedelta(hours=1)
    claimed = fnd.config.schedule_batch({"billing.retries": 1}, at=at)
    cancelled = fnd.config.schedule_batch({"billing.retries": 2}, at=at)
    deferred = fnd.config.deferred
    # When the first is claimed (its task appended config.batch_applying) and the second cancelled
    deferred._append(claimed.id, "config.batch_applying", {}, 1)
    deferred.cancel(cancelled.id)
    # Then cancelling the first is a conflict, and running the second's task applies nothing
    with pytest.raises(Conflict):
        deferred.cancel(claimed.id)
    before = fnd.config.version
    assert deferred.apply({"billing.retries": 2}, expected_version=None, actor=None, batch_id=cancelled.id) == {
        "batch_id": cancelled.id, "cancelled": True}
    assert fnd.config.version == before


def test_a_deferred_batch_that_a_schema_refuses_now_is_refused_at_the_call_site_with_nothing_recorded(
        fnd: Foundation) -> None:
    # Given a schema on billing.retries (an integer >= 0)
    fnd.config.register_schema({"type": "object", "properties": {"billing": {"type": "object", "properties": {
        "retries": {"type": "integer", "minimum": 0}}}}})
    version = fnd.config.version
    scheduled = len(fnd.events.query(esf.Q.type("config.batch_scheduled")))
    # When a batch the schema refuses is scheduled, sent to a worker, or only validated
    for send in (lambda c: fnd.config.schedule_batch(c, at=datetime.now(UTC) + timedelta(hours=1)),
                 fnd.config.update_batch_async, fnd.config.validate_batch):
        with pytest.raises(ValidationError) as info:
            send({"billing.retries": -1})
        # Then each is refused naming the path
        assert "billing.retries" in info.value.errors
    # And nothing was recorded or written; a valid batch only validated writes nothing either
    fnd.config.validate_batch({"billing.retries": 2})
    assert fnd.config.version == version
    assert len(fnd.events.query(esf.Q.type("config.batch_scheduled"))) == scheduled
    assert fnd.config.deferred.scheduled() == []
