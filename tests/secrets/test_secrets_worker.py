"""The routed refresh job in a real worker, and a sweep for a secret's value across everything ESF keeps."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env, wait_for
from tests.secrets import apps
from tests.secrets.conftest import Bao


def put(bao: Bao, path: str, **data: str) -> int:
    resp = bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
    return int(resp["data"]["version"])


@pytest.fixture
def env(bao: Bao, redis_url: str, pg_url: str, tmp_path: Path, unique: str) -> dict[str, str]:
    return settings_env(redis_url, data_dir=str(tmp_path / "data"), extra={
        "ESF_DATABASE_URL": pg_url,
        "ESF_CONFIG_REDIS_PREFIX": f"esf:config:{unique}:",
        "ESF_TELEMETRY_KEY_PREFIX": f"esf:telemetry:{unique}:",
        "ESF_SECRETS_BACKEND": "vault",
        "ESF_SECRETS_VAULT_URL": bao.url,
        "ESF_SECRETS_VAULT_TOKEN": bao.root_token,
        "ESF_SECRETS_CACHE_TTL_S": "0",
    })


def test_the_refresh_job_runs_on_the_secrets_queue_and_detects_a_new_version(
        bao: Bao, env: dict[str, str], tmp_path: Path) -> None:
    # Given a worker and a secret at version 1
    path = f"refresh-{uuid.uuid4().hex[:6]}"
    put(bao, path, token="v1-value")
    fnd = Foundation(esf.Settings.from_env(env))
    job = fnd.jobs.get("esf.secrets.refresh")
    assert job.options.queue == fnd.settings.jobs.service_queue("secrets")
    schedules = [s.name for s in __import__("esf.jobs._schedules", fromlist=["x"]).schedule_service(fnd).declared()]
    assert "esf.secrets.refresh" in schedules
    worker = Worker(env, tmp_path / "w.log", concurrency=1, app="tests.secrets.apps:make")
    try:
        worker.wait_ready()
        # When the refresh job runs (it reads the path), a version 2 is written, and it runs again
        first = job.enqueue([path]).wait(60)
        put(bao, path, token="v2-value")
        second = job.enqueue([path]).wait(60)
        # And a run that cannot succeed (a malformed path) is dead-lettered on the service's DLQ
        bad = job.enqueue(["../escape"])
        dead = wait_for(lambda: next((e for e in fnd.jobs.dlq.list() if e.job_id == bad.id), None),
                        timeout=60, message="the failed refresh to be dead-lettered")
    finally:
        worker.stop()
        fnd.close()
    # Then the first run only checked the path, the second found the rotation
    assert dead.queue == fnd.settings.jobs.service_queue("secrets") and dead.job == "esf.secrets.refresh"
    assert first["checked"] == [path] and first["rotated"] == []
    assert second["rotated"] == [path]
    assert "v1-value" not in json.dumps([first, second])
    # And the rotation is an event (from the worker) without the value
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        rotated = [e for e in fnd.events.read_stream("secrets") if e.event_type == "secrets.rotated"]
        assert [(e.data["path"], e.data["version"]) for e in rotated] == [(path, 2)]
    finally:
        fnd.close()


def test_a_secret_used_in_config_jobs_failures_and_dead_letters_appears_in_none_of_them(
        bao: Bao, env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a secret with a recognisable value, referenced from configuration
    value = f"sweep-{uuid.uuid4().hex}"
    path = f"sweep-{uuid.uuid4().hex[:6]}"
    put(bao, path, api_key=value)
    fnd = apps.make(esf.Settings.from_env(env))
    worker = Worker(env, tmp_path / "w.log", concurrency=1, app="tests.secrets.apps:make")
    try:
        fnd.config.update("svc", {"token": f"secret://{path}#api_key"}, actor="test")
        assert fnd.config.get("svc.token").reveal() == value
        worker.wait_ready()
        # When jobs use it, one fails with it in its message until it is dead-lettered, and config is read
        assert fnd.jobs.enqueue("s.use_secret", path, "api_key").wait(60) == len(value)
        assert fnd.jobs.enqueue("s.config_secret", "svc.token").wait(60) == "Secret"
        failing = fnd.jobs.enqueue("s.fail_with_secret", path, "api_key")
        dead = wait_for(lambda: next((e for e in fnd.jobs.dlq.list() if e.job_id == failing.id), None),
                        timeout=60, message="the failing job to be dead-lettered")
        assert fnd.jobs.get("esf.secrets.refresh").enqueue([path]).wait(60)["checked"] == [path]
        assert fnd.flush(timeout=10)
    finally:
        worker.stop()
    try:
        # Then the value is nowhere: worker log, this process's log, stored events, config history, DLQ
        events = fnd.events.read_all(limit=10_000)
        kinds = {e.event_type for e in events}
        assert any(k.startswith("job.") for k in kinds), kinds  # the worker's job history is there to search
        places = {
            "worker log": worker.log_path.read_text(errors="replace"),
            "test log": caplog.text,
            "events": json.dumps([[e.event_type, dict(e.data), dict(e.metadata)] for e in events], default=str),
            "config history": repr(fnd.config.history()) + json.dumps([h.document for h in fnd.config.history()],
                                                                     default=str),
            "dead letters": json.dumps([e.to_dict() for e in fnd.jobs.dlq.list()], default=str),
        }
        assert "secret://" in places["config history"]
        leaked = [name for name, text in places.items() if value in text]
        assert leaked == []
        # And the failure was recorded, with the value redacted in its message
        assert "upstream refused the credential **********" in json.dumps(dead.to_dict())
    finally:
        fnd.close()
