"""The health endpoint of a real worker subprocess: liveness, readiness, degraded is ready, authentication."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from esf.resilience import RedisSharedState
from tests.jobs.harness import ROOT, Worker, settings_env, wait_for
from tests.servers import PrivateRedis, free_port

APP = "tests.resilience.apps:make"
TOKEN = "s3cret-health-token"


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def start_worker(broker_url: str, tmp_path: Path, port: int, extra: dict[str, str]) -> Worker:
    env = settings_env(broker_url, data_dir=str(tmp_path / "data"),
                       extra={"ESF_HEALTH_CACHE_S": "0.5", "ESF_RESILIENCE_BROKER_CONNECT_TIMEOUT_S": "1", **extra})
    worker = Worker(env, tmp_path / "worker.log", concurrency=1, pool="solo", app=APP)
    return worker


@pytest.mark.slow
def test_liveness_readiness_degraded_and_broker_down(private_redis: PrivateRedis, tmp_path: Path) -> None:
    port = free_port()
    worker = start_worker(private_redis.url, tmp_path, port, {"ESF_HEALTH_PORT": str(port), "ESF_HEALTH_TOKEN": TOKEN})
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=60, message="the health endpoint")
        assert get(port, "/healthz", token=None)[0] == 401
        assert get(port, "/readyz", token="wrong")[0] == 401
        assert get(port, "/readyz", token=TOKEN + "x")[0] == 401
        assert get(port, "/nothing")[0] == 404
        code, report = get(port, "/readyz")
        assert code == 200 and report["status"] == "ok" and report["ready"] is True
        assert report["services"]["breakers"]["breakers"]["payments_api"]["state"] == "closed"

        # Another process opens the shared breaker: the worker is degraded, and still ready.
        import redis

        client: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url)
        RedisSharedState(lambda: client).open("payments_api", 300)
        wait_for(lambda: get(port, "/readyz")[1].get("status") == "degraded", timeout=30, message="degraded")
        code, report = get(port, "/readyz")
        assert code == 200 and report["ready"] is True
        assert "payments_api" in report["services"]["breakers"]["reason"]

        # The broker goes away: not ready (503), while the process stays alive.
        private_redis.kill()
        wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=30, message="not ready")
        code, report = get(port, "/readyz")
        assert report["not_ready"] == ["broker"] and report["services"]["broker"]["status"] == "down"
        assert get(port, "/healthz")[0] == 200
        # It comes back: ready again.
        private_redis.start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=60, message="ready again")
    finally:
        worker.kill()
    assert TOKEN not in worker.log()


@pytest.mark.slow
def test_auth_none_serves_without_a_token(private_redis: PrivateRedis, tmp_path: Path) -> None:
    port = free_port()
    worker = start_worker(private_redis.url, tmp_path, port, {"ESF_HEALTH_PORT": str(port), "ESF_HEALTH_AUTH": "none"})
    try:
        wait_for(lambda: get(port, "/healthz", token=None)[0] == 200, timeout=60, message="the health endpoint")
        code, report = get(port, "/readyz", token=None)
        assert code == 200 and report["ready"] is True
    finally:
        worker.kill()


def test_worker_refuses_a_health_port_without_a_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ESF_DATA_DIR": str(tmp_path),
           "ESF_REDIS_URL": "redis://127.0.0.1:6379/15"}
    out = subprocess.run([sys.executable, "-m", "esf.cli", "--app", APP, "worker", f"--health-port={free_port()}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "health.token" in out.stderr and "Traceback" not in out.stderr


def test_readiness_is_cached() -> None:
    from esf.resilience import ReadinessCache

    now = [0.0]
    calls = []
    cache = ReadinessCache(lambda: calls.append(1) or {"ready": True}, 1.0, clock=lambda: now[0])
    for _ in range(5):
        cache.get()
    now[0] = 1.0
    cache.get()
    assert len(calls) == 2 and cache.checks == 2


def test_esf_health_reports_degraded_with_reason_and_ready(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ESF_DATA_DIR": str(tmp_path)}
    base = [sys.executable, "-m", "esf.cli", "--app", "tests.resilience.apps:embedded", "health"]
    out = subprocess.run([*base, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "degraded" and report["ready"] is True
    assert report["services"]["breakers"]["reason"] == "breaker open: payments_api (open)"
    out = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("status: degraded  ready: yes")
    assert "breakers   degraded  (breaker open: payments_api (open))" in out.stdout


@pytest.mark.slow
def test_esf_up_serves_the_health_endpoint(redis_url: str, tmp_path: Path) -> None:
    import os
    import signal

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_") or k.startswith("ESF_TEST_")}
    env.update(settings_env(redis_url, data_dir=str(tmp_path / "data"), extra={"ESF_HEALTH_TOKEN": TOKEN}))
    env["PYTHONPATH"] = str(ROOT)
    with open(tmp_path / "up.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "esf.cli", "--app", APP, "up", f"--health-port={port}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=90, message="esf up's health endpoint")
            assert get(port, "/healthz", token=None)[0] == 401
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
