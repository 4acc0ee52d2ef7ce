"""``esf secrets get|status|refresh`` in a subprocess, over the file backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"db": {"password": "pw-cli-1", "user": "app"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_") or k.startswith("ESF_TEST_")}
    env.update({"ESF_DATA_DIR": str(tmp_path / "data"), "ESF_SECRETS_BACKEND": "file",
                "ESF_SECRETS_FILE_PATH": str(secrets_file), "PYTHONPATH": str(ROOT)})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "esf.cli", "secrets", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    run.file = secrets_file  # type: ignore[attr-defined]
    return run


def test_get_prints_keys_redacted_unless_reveal_is_asked(cli) -> None:  # type: ignore[no-untyped-def]
    # When the secret is printed without and with --reveal
    redacted = cli("get", "db")
    revealed = cli("get", "db", "password", "--reveal")
    missing = cli("get", "nope")
    # Then the values show only with --reveal, and a missing secret is a coded error
    assert redacted.returncode == 0, redacted.stderr
    assert "password = **********" in redacted.stdout and "pw-cli-1" not in redacted.stdout + redacted.stderr
    assert revealed.stdout.strip() == "pw-cli-1"
    assert missing.returncode == 1 and "secret_not_found" in missing.stderr


def test_status_shows_the_last_rotation_recorded_by_any_process(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Given a process that read "db", saw the file change on refresh and recorded the rotation
    from esf import Foundation, Settings
    from esf.settings import SecretsSettings

    fnd = Foundation(Settings(data_dir=str(tmp_path / "data"),
                              secrets=SecretsSettings(backend="file", file_path=str(cli.file))))
    try:
        fnd.secrets.get("db", "password")
        cli.file.write_text(json.dumps({"db": {"password": "pw-cli-22", "user": "app"}}))
        assert fnd.secrets.refresh()["rotated"] == ["db"]
        assert fnd.flush(timeout=10)
    finally:
        fnd.close()
    # When status is asked in another process
    status = cli("status", "--json")
    text = cli("status")
    # Then it reports the backend and the rotation of "db", and no value
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["backend"]["backend"] == "file" and report["health"]["status"] == "ok"
    assert list(report["last_rotation"]) == ["db"]
    assert "rotated db:" in text.stdout
    assert "pw-cli" not in status.stdout + text.stdout


def test_refresh_local_prints_the_report(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("refresh", "--local", "db")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checked"] == ["db"]
