"""docker-compose.yml and deploy/prometheus.yml are valid, complete and hold no secret.

Docker has no engine on the CI machine: nothing is started. ``docker-compose config``
validates the file and resolves every variable; ``promtool`` checks the Prometheus
configuration. A missing tool skips on a laptop and fails in CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import esf
from esf.errors import SettingsError
from tests.servers import unavailable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"

#: What a user must provide (deploy/example.env); test values, not secrets.
REQUIRED_ENV = {
    "ESF_APP": "myapp.main:fnd",
    "POSTGRES_PASSWORD": "pg-test-password",
    "RABBITMQ_PASSWORD": "rabbit-test-password",
    "REDIS_PASSWORD": "redis-test-password",
    "VAULT_DEV_ROOT_TOKEN_ID": "vault-test-token",
    "ESF_FLOWER_USER": "admin",
    "ESF_FLOWER_PASSWORD": "flower-test-password",
    "METRICS_PASSWORD": "metrics-test-password",
}

SERVICES = {"redis", "rabbitmq", "postgres", "vault", "worker", "services", "beat", "flower", "prometheus"}
ESF_SERVICES = ("worker", "services", "beat", "flower")


def _require_tool(*names: str) -> list[str]:
    for name in names:
        path = shutil.which(name)
        if path:
            return [path]
    docker = shutil.which("docker")
    if "docker-compose" in names and docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    unavailable(f"{' or '.join(names)} is not installed (CI installs it: scripts/ci-packages.sh)")


def _compose(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = _require_tool("docker-compose")
    # Only PATH and the given variables: a developer's own .env or exports must not leak in.
    # The project directory is a fresh one, so no .env file is read either.
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE_FILE), "--project-directory", str(cwd), *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The configuration as docker-compose resolves it with every required variable set."""
    cwd = tmp_path_factory.mktemp("compose")
    proc = _compose(["config"], REQUIRED_ENV, cwd)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def test_compose_config_accepts_the_file_when_the_required_variables_are_set(tmp_path: Path) -> None:
    # Given every required variable, When docker-compose validates the file quietly
    proc = _compose(["config", "-q"], REQUIRED_ENV, tmp_path)
    # Then it is accepted
    assert proc.returncode == 0, proc.stderr


def test_compose_defines_the_production_services(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) >= SERVICES


@pytest.mark.parametrize("missing", sorted(REQUIRED_ENV))
def test_compose_refuses_to_resolve_without_each_required_variable(missing: str, tmp_path: Path) -> None:
    # Given every required variable but one
    env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    # When docker-compose resolves the file
    proc = _compose(["config", "-q"], env, tmp_path)
    # Then it refuses, naming the variable
    assert proc.returncode != 0
    assert missing in proc.stderr


def test_no_secret_is_committed_in_the_compose_files() -> None:
    # Every password and token comes from the environment.
    text = COMPOSE_FILE.read_text() + PROMETHEUS_FILE.read_text()
    for value in REQUIRED_ENV.values():
        assert value not in text
    example = (ROOT / "deploy" / "example.env").read_text()
    for line in example.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value == "", f"deploy/example.env sets {name}"


def test_redis_keeps_queued_jobs_on_disk_and_never_evicts_them(resolved: dict[str, Any]) -> None:
    command = " ".join(resolved["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command


def test_esf_services_wait_for_healthy_servers_and_have_healthchecks(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in SERVICES:
        assert "healthcheck" in services[name], name
    for name in ESF_SERVICES:
        deps = services[name]["depends_on"]
        for server in ("redis", "rabbitmq", "postgres", "vault"):
            assert deps[server]["condition"] == "service_healthy", (name, server)


def test_esf_services_run_the_esf_commands_for_the_application(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    app = REQUIRED_ENV["ESF_APP"]
    assert services["worker"]["command"][:4] == ["esf", "--app", app, "worker"]
    assert services["beat"]["command"][:4] == ["esf", "--app", app, "beat"]
    assert services["flower"]["command"][:4] == ["esf", "--app", app, "flower"]
    for name in ESF_SERVICES:
        env = services[name]["environment"]
        assert env["ESF_BROKER_URL"].startswith("amqp://esf:rabbit-test-password@rabbitmq:5672/")
        assert env["ESF_REDIS_URL"] == "redis://:redis-test-password@redis:6379/0"
        assert env["ESF_DATABASE_URL"] == "postgresql://esf:pg-test-password@postgres:5432/esf"
    assert services["flower"]["environment"]["ESF_FLOWER_PASSWORD"] == "flower-test-password"


def test_the_foundation_s_own_work_runs_on_a_worker_apart_from_application_jobs(resolved: dict[str, Any]) -> None:
    # Given the resolved compose file
    services = resolved["services"]
    app = REQUIRED_ENV["ESF_APP"]
    # Then the `services` container consumes ESF's queues only, and the application workers none of them
    assert services["services"]["command"] == ["esf", "--app", app, "worker", "--profile", "services"]
    assert "ESF_WORKERS_PROFILE" not in services["services"]["environment"]
    assert services["worker"]["environment"]["ESF_WORKERS_PROFILE"] == "application"


def test_published_ports_listen_on_loopback_only(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


@pytest.mark.parametrize("service", ESF_SERVICES)
def test_the_esf_environment_of_each_service_is_valid_settings(resolved: dict[str, Any], service: str) -> None:
    # Given the ESF_* variables compose hands to the container
    env = {k: str(v) for k, v in resolved["services"][service]["environment"].items() if k.startswith("ESF_")}
    # When ESF reads them, Then every name is a known setting and every value valid
    try:
        settings = esf.Settings.from_env(env)
    except SettingsError as exc:
        pytest.fail(f"{service}: {exc}")
    assert settings.broker_kind == "amqp"


def test_prometheus_configuration_is_valid() -> None:
    cmd = _require_tool("promtool")
    proc = subprocess.run([*cmd, "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_esf_workers_and_flower() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    esf_job = jobs["esf"]
    assert esf_job["dns_sd_configs"][0]["names"] == ["worker"]
    assert esf_job["dns_sd_configs"][0]["port"] == 9464
    assert esf_job["basic_auth"]["password_file"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
