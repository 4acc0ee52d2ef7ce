"""``esf flower``: the real Flower against a real worker, read through its HTTP API with basic auth."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import esf
from esf.cli._common import CommandError
from esf.cli._run import flower_argv
from esf.foundation import Foundation
from tests.conftest import REDIS_HOST, REDIS_PORT, lease_redis_db
from tests.jobs import apps
from tests.jobs.harness import ROOT, Worker, settings_env, wait_for

USER = "ops-admin"
PASSWORD = "flower-test-" + uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Flower:
    """An ``esf flower`` subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("ESF_", "FLOWER_")) or k.startswith("ESF_TEST_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esf.cli", "--app", "tests.jobs.apps:make", "flower",
             f"--port={self.port}", "--address=127.0.0.1", *extra],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return get(self.url("/healthcheck"), auth=None)[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=timeout, message=f"Flower to answer on port {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self._log.close()


def get(url: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, Any]:
    """GET ``url``; returns the status and the decoded JSON body (or text)."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    with lease_redis_db() as db:
        redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        yield settings_env(redis_url, queues=(queue,), data_dir=str(tmp_path_factory.mktemp("esf-data")),
                           extra={"ESF_WORKERS_SEND_EVENTS": "true"})


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(env, Path(tmp_path_factory.mktemp("worker")) / "worker.log")
    try:
        w.wait_ready()
        yield w
    finally:
        w.discard()


@pytest.fixture(scope="module")
def flower(env: dict[str, str], worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    f = Flower({**env, "ESF_FLOWER_USER": USER, "ESF_FLOWER_PASSWORD": PASSWORD},
               Path(tmp_path_factory.mktemp("flower")) / "flower.log")
    try:
        f.wait_ready()
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def fnd(env: dict[str, str]) -> Iterator[Foundation]:
    f = apps.build(esf.Settings.from_env(env))
    try:
        yield f
    finally:
        f.close()


def worker_name_prefix(worker: Worker) -> str:
    # workers.worker_argv names the worker esf-<profile>-<pid of `esf worker`>-<random>@<host>.
    return f"esf-default-{worker.proc.pid}-"


def test_flower_lists_the_worker_and_a_finished_job(flower: Flower, worker: Worker, fnd: Foundation) -> None:
    prefix = worker_name_prefix(worker)

    # Given Flower receives the worker's events (its heartbeats arrive every 2 s)
    def alive_in_events() -> bool:
        status, body = get(flower.url("/api/workers?status=1"))
        assert status == 200, body
        return any(name.startswith(prefix) and alive for name, alive in body.items())

    wait_for(alive_in_events, timeout=60, interval=0.5, message=f"Flower to see worker {prefix}* alive")

    # When a job runs to completion
    handle = fnd.jobs.get("t.add").enqueue(2, 3)
    assert handle.wait(timeout=60) == 5

    # Then Flower's task list has the job, by id, as succeeded
    def task_listed() -> dict[str, Any] | None:
        status, body = get(flower.url("/api/tasks?limit=1000"))
        assert status == 200, body
        task = body.get(handle.id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_for(task_listed, timeout=60, interval=0.5, message=f"Flower to list job {handle.id} as SUCCESS")
    assert task["name"] == "t.add"
    assert task["worker"].startswith(prefix)

    # And its worker list (from inspect) has the worker with the job registered
    status, workers = get(flower.url("/api/workers?refresh=1"))
    assert status == 200, workers
    names = [name for name in workers if name.startswith(prefix)]
    assert names, workers
    assert "t.add" in workers[names[0]]["registered"]


def test_flower_lists_the_foundation_s_service_tasks_after_they_ran(flower: Flower, fnd: Foundation) -> None:
    # Given the worker consumes the service queues too (default profile)
    # When three service tasks run to completion
    handles = {name: fnd.jobs.get(name).enqueue()
               for name in ("esf.events.outbox_sweep", "esf.config.reconcile", "esf.telemetry.rollup")}
    for handle in handles.values():
        handle.wait(timeout=60)

    # Then Flower's task list has each, by id and name, as succeeded on its service queue
    def listed() -> dict[str, Any] | None:
        status, body = get(flower.url("/api/tasks?limit=1000"))
        assert status == 200, body
        tasks = {name: body.get(h.id) for name, h in handles.items()}
        return tasks if all(t and t.get("state") == "SUCCESS" for t in tasks.values()) else None

    tasks = wait_for(listed, timeout=60, interval=0.5, message="Flower to list the service tasks as SUCCESS")
    for name, task in tasks.items():
        assert task["name"] == name
        assert task["routing_key"] == fnd.settings.jobs.service_queue(name.split(".")[1])


def test_flower_api_refuses_requests_without_credentials(flower: Flower) -> None:
    assert get(flower.url("/api/workers"), auth=None)[0] == 401
    assert get(flower.url("/api/tasks"), auth=None)[0] == 401


def test_flower_api_refuses_wrong_credentials(flower: Flower) -> None:
    assert get(flower.url("/api/workers"), auth=(USER, PASSWORD + "x"))[0] == 401


def test_esf_flower_refuses_to_start_without_credentials(env: dict[str, str], tmp_path: Path) -> None:
    # Given no ESF_FLOWER_USER / ESF_FLOWER_PASSWORD
    f = Flower(env, tmp_path / "flower.log")
    try:
        # When `esf flower` starts, Then it exits at once with a message naming the settings
        code = f.proc.wait(timeout=60)
    finally:
        f.stop()
    assert code != 0
    output = f.log()
    assert "ESF_FLOWER_USER" in output and "ESF_FLOWER_PASSWORD" in output
    assert "--no-auth" in output


def test_esf_flower_starts_without_credentials_when_told_no_auth(env: dict[str, str], worker: Worker,
                                                                  tmp_path: Path) -> None:
    f = Flower(env, tmp_path / "flower.log", "--no-auth")
    try:
        f.wait_ready()
        # The web UI is open; Flower's own guard still keeps its API closed (FLOWER_UNAUTHENTICATED_API).
        assert get(f.url("/"), auth=None)[0] == 200
        assert get(f.url("/api/workers"), auth=None)[0] == 401
    finally:
        f.stop()


def test_flower_credentials_never_appear_on_the_command_line(flower: Flower) -> None:
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert PASSWORD not in cmdline


@pytest.mark.parametrize(("user", "password"), [("ops", "a,b"), ("o:ps", "secret"), ("o,ps", "secret")])
def test_flower_credentials_that_flower_would_split_are_refused(user: str, password: str) -> None:
    # Flower splits FLOWER_BASIC_AUTH on ',' and each entry on ':': such a password would never match.
    settings = esf.Settings.from_env({"ESF_FLOWER_USER": user, "ESF_FLOWER_PASSWORD": password})
    with Foundation(settings) as f, pytest.raises(CommandError) as info:
        flower_argv(f, port=None, address=None, no_auth=False)
    assert password not in str(info.value)
