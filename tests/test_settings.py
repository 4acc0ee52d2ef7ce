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


def test_pool_processes_are_recycled_only_when_asked(tmp_path: Path) -> None:
    from esf.workers import get_profile, worker_argv

    from esf.foundation import Foundation

    # By default a pool process lives as long as the worker (Celery's default): no recycling cost
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        assert not any(a.startswith("--max-tasks-per-child") for a in worker_argv(fnd, get_profile("default")))
    # The setting bounds it, for prefork pools (threads are not replaced)
    settings = esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path), "ESF_WORKERS_MAX_TASKS_PER_CHILD": "500"})
    assert settings.workers.max_tasks_per_child == 500
    with Foundation(settings) as fnd:
        assert "--max-tasks-per-child=500" in worker_argv(fnd, get_profile("default"))
        assert not any(a.startswith("--max-tasks-per-child") for a in worker_argv(fnd, get_profile("io")))


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_a_bad_recycling_limit_is_refused_naming_the_setting(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path), "ESF_WORKERS_MAX_TASKS_PER_CHILD": value})
    assert "workers.max_tasks_per_child" in str(caught.value)


def test_the_job_history_flush_time_reaches_the_writer(tmp_path: Path) -> None:
    from esf.foundation import Foundation

    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        assert fnd._event_writer.flush_interval_s == 0.5
    settings = esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path), "ESF_EVENTS_HISTORY_FLUSH_S": "0.05"})
    with Foundation(settings) as fnd:
        assert fnd._event_writer.flush_interval_s == 0.05


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_job_history_flush_time_is_refused_naming_the_setting(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path), "ESF_EVENTS_HISTORY_FLUSH_S": value})
    assert "events.history_flush_s" in str(caught.value)
