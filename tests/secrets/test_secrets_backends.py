"""The env and file backends, config references, and the Foundation's secrets service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from esf.plugins.env_secrets import EnvSecretsProvider
from esf.plugins.file_secrets import FileSecretsProvider

from esf import Foundation, Settings
from esf._json import check_json
from esf.errors import SecretNotFound, SerializationError, SettingsError, ValidationError
from esf.secrets import Secret, SecretChange, SecretsService, parse_reference
from esf.settings import SecretsSettings
from tests.jobs.harness import wait_for


def test_the_env_backend_reads_prefixed_variables_as_keys() -> None:
    # Given variables of the secret "db" and a bare one of "api-key"
    env = {"SECRET_DB_PASSWORD": "pw", "SECRET_DB_USER": "app", "SECRET_API_KEY": "k", "OTHER": "x"}
    secrets = SecretsService(EnvSecretsProvider(environ=env), SecretsSettings())
    # Then keys are the lower-cased rest of the name; a bare variable is the key "value"
    assert secrets.get("db", "password").reveal() == "pw"
    assert sorted(secrets.read("db").data) == ["password", "user"]
    assert secrets.get("api-key").reveal() == "k"
    # And a missing secret, or a pinned version, is refused with a specific error
    with pytest.raises(SecretNotFound):
        secrets.get("nope", "x")
    with pytest.raises(ValidationError):
        secrets.get("db", "password", version=1)
    with pytest.raises(ValidationError):
        secrets.lease("db")


def test_the_file_backend_sees_an_edited_file_as_a_rotation(tmp_path: Path) -> None:
    # Given a secrets file read once, and a subscriber
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db": {"password": "one"}}))
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file", cache_ttl_s=3600))
    assert secrets.get("db", "password").reveal() == "one"
    heard: list[SecretChange] = []
    secrets.subscribe("db", heard.append)
    # When the file is edited (a different size, so the change is seen whatever the clock resolution)
    path.write_text(json.dumps({"db": {"password": "two-2"}}))
    secrets.refresh()
    # Then the new value is served and the subscriber heard once
    assert secrets.get("db", "password").reveal() == "two-2"
    assert [c.kind for c in heard] == ["version"]


def test_a_subscriber_hears_of_a_rotation_from_the_refresh_thread_without_any_read(tmp_path: Path) -> None:
    # Given a subscribed process that refreshes every 0.3 s in the background and never reads again
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db": {"password": "one"}}))
    secrets = SecretsService(FileSecretsProvider(path),
                             SecretsSettings(backend="file", cache_ttl_s=3600, refresh_interval_s=0.3))
    heard: list[SecretChange] = []
    secrets.subscribe("db", heard.append)
    try:
        wait_for(lambda: secrets.status()["cached"], timeout=10, message="the first background read")
        # When the secret changes
        path.write_text(json.dumps({"db": {"password": "two-2"}}))
        # Then the subscriber hears of it from the thread
        wait_for(lambda: heard, timeout=10, message="the rotation notice")
        assert [c.path for c in heard] == ["db"]
    finally:
        secrets.close()
    assert not secrets.keeper.running


def test_refresh_reads_the_watched_paths_of_the_settings(tmp_path: Path) -> None:
    # Given a service that never read "api" but watches it
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"api": {"token": "t"}, "db": {"password": "p"}}))
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file", watch=("api",)))
    # When it refreshes, then the watched path was read (and the other one was not)
    assert secrets.refresh()["checked"] == ["api"]
    assert [c["path"] for c in secrets.status()["cached"]] == ["api"]


def test_a_malformed_secrets_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text('{"db": {"password": "leaky-value"')
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file"))
    with pytest.raises(ValidationError) as info:
        secrets.get("db", "password")
    assert "leaky" not in str(info.value)


def test_secret_references_parse_and_bad_ones_are_refused() -> None:
    ref = parse_reference("secret://db/main?version=3#password")
    assert (ref.path, ref.version, ref.key) == ("db/main", 3, "password")
    assert parse_reference("secret://db").key is None
    for bad in ("secret://", "secret:///abs#k", "secret://db?version=0#k", "secret://db?v=1#k", "db#k"):
        with pytest.raises(ValidationError):
            parse_reference(bad)


def test_a_secret_cannot_be_sent_as_json() -> None:
    with pytest.raises(SerializationError):
        check_json({"password": Secret("pw")})
    with pytest.raises(TypeError):
        json.dumps(Secret("pw"))


def test_an_unknown_backend_or_bad_setting_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        _ = Foundation(Settings(data_dir=str(tmp_path), secrets=SecretsSettings(backend="nope"))).secrets
    assert "secrets.backend" in str(info.value)
    with pytest.raises(SettingsError) as margin:
        Settings.from_env({"ESF_SECRETS_RENEW_MARGIN": "1.5"})
    assert "secrets.renew_margin" in str(margin.value)
    settings = Settings.from_env({"ESF_SECRETS_BACKEND": "vault", "ESF_SECRETS_VAULT_TOKEN": "t0k"})
    assert isinstance(settings.secrets.vault_token, Secret) and "t0k" not in repr(settings)


@pytest.fixture
def fnd(tmp_path: Path) -> Any:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db": {"password": "hunter2-db", "user": "app"}}))
    settings = Settings(data_dir=str(tmp_path / "data"),
                        secrets=SecretsSettings(backend="file", file_path=str(path), cache_ttl_s=0))
    foundation = Foundation(settings)
    yield foundation
    foundation.close()


def test_a_config_reference_is_resolved_on_read_and_stays_a_reference_in_history(fnd: Any, tmp_path: Path) -> None:
    # Given a configuration value that refers to a secret
    fnd.config.update("db", {"password": "secret://db#password", "host": "h"})
    # When it is read
    value = fnd.config.get("db.password")
    whole = fnd.config.get("db")
    # Then it is the secret (redacted), and the history and snapshot hold only the reference
    assert isinstance(value, Secret) and value.reveal() == "hunter2-db"
    assert isinstance(whole["password"], Secret) and whole["host"] == "h"
    history = repr(fnd.config.history())
    assert "secret://db#password" in history and "hunter2" not in history
    # And a rotated secret shows on the next read
    (tmp_path / "secrets.json").write_text(json.dumps({"db": {"password": "hunter3-db!"}}))
    assert fnd.config.get("db.password").reveal() == "hunter3-db!"
    for f in Path(fnd.settings.data_dir).rglob("*"):
        if f.is_file():
            assert b"hunter" not in f.read_bytes(), f


def test_the_foundation_reports_secrets_health_and_records_rotations_as_events(fnd: Any, tmp_path: Path) -> None:
    # Given the Foundation's secrets service after a read
    assert fnd.secrets.get("db", "password").reveal() == "hunter2-db"
    # When the secret rotates and the service refreshes
    (tmp_path / "secrets.json").write_text(json.dumps({"db": {"password": "hunter9-db-x", "user": "app"}}))
    fnd.secrets.refresh()
    assert fnd.flush(timeout=10)
    # Then health lists secrets as ok and the rotation is an event of stream "secrets" without the value
    assert fnd.health()["services"]["secrets"]["status"] == "ok"
    stored = fnd.events.read_stream("secrets")
    assert [e.event_type for e in stored] == ["secrets.rotated"]
    assert "hunter" not in repr([e.data for e in stored])


def test_a_secret_passed_as_a_job_argument_is_refused_at_the_call_site(fnd: Any) -> None:
    # Given a job and a secret
    @fnd.job(name="t.takes_value")
    def takes_value(value: str) -> None:
        return None

    secret = fnd.secrets.get("db", "password")
    # When the secret itself is enqueued, then the call fails before anything is sent, naming no value
    with pytest.raises(SerializationError) as info:
        takes_value.enqueue(secret)
    assert "Secret" in str(info.value) and "hunter" not in str(info.value)


def test_a_child_forked_while_another_thread_held_a_lock_does_not_hang(tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    # Given a service whose lock another thread holds at the moment of a fork
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db": {"password": "p"}}))
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file", refresh_thread=False))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with secrets._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: reads and subscribes, which take the service's locks
        secrets.get("db", "password")
        secrets.subscribe("db", lambda change: None)
        os._exit(0)
    release.set()
    holder.join(10)
    # Then the child finishes (it got locks of its own) instead of waiting forever
    deadline = time.monotonic() + 20
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a lock held by another thread of its parent")
    assert os.waitstatus_to_exitcode(status) == 0
