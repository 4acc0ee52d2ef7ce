"""Settings from the environment and TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

import esf
from esf.errors import SettingsError


def test_environment_overrides_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "esf.toml"
    path.write_text(
        'broker_url = "redis://127.0.0.1:6379/3"\n'
        "[jobs]\nqueues = [\"default\", \"billing\"]\ndefault_retries = 7\n"
        "[flower]\nuser = \"ops\"\npassword = \"s3cret\"\n"
    )
    s = esf.Settings.from_env({"ESF_SETTINGS": str(path), "ESF_JOBS_DEFAULT_RETRIES": "9"})
    assert s.broker_kind == "redis"
    assert s.jobs.queues == ("default", "billing")
    assert s.jobs.default_retries == 9
    assert s.flower.password is not None and s.flower.password.reveal() == "s3cret"
    assert "s3cret" not in repr(s)


def test_defaults_are_the_embedded_deployment(tmp_path: Path) -> None:
    s = esf.Settings(data_dir=str(tmp_path))
    assert s.broker_kind == "embedded"
    assert s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_result_backend.startswith("db+sqlite:///")
    assert s.effective_redis_url is None


def test_a_settings_file_with_unknown_or_mistyped_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "esf.toml"
    path.write_text("[jobs]\nretries = 3\n")
    with pytest.raises(SettingsError, match="jobs.retries: unknown setting"):
        esf.Settings.from_env({"ESF_SETTINGS": str(path)})
    path.write_text("[jobs]\ndefault_retries = \"many\"\n")
    with pytest.raises(SettingsError, match="jobs.default_retries"):
        esf.Settings.from_env({"ESF_SETTINGS": str(path)})
    path.write_text("not toml = = =")
    with pytest.raises(SettingsError, match="ESF_SETTINGS"):
        esf.Settings.from_env({"ESF_SETTINGS": str(path)})


def test_a_password_in_a_url_is_not_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as err:
        esf.Settings.from_env({"ESF_BROKER_URL": "ftp://user:hunter2@host/"})
    assert "hunter2" not in str(err.value)


def test_secrets_never_show_their_value() -> None:
    secret = esf.Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(secret)
