"""`esf.telemetry.export`: one push of the cluster-wide view to StatsD, continuing from the last push."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.errors import ServiceUnavailable, ValidationError
from esf.foundation import Foundation
from tests.jobs.harness import ROOT

EMIT = """
import sys, esf
fnd = esf.Foundation(esf.Settings.from_env())
fnd.telemetry.counter("orders.placed", {"shop": "eu"}).inc(int(sys.argv[1]))
fnd.close()  # the final push of this process's increments
"""


@pytest.fixture
def statsd() -> Iterator[socket.socket]:
    """A UDP socket standing for the StatsD agent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def env(redis_url: str, data_dir: Path, unique: str, statsd: socket.socket) -> dict[str, str]:
    return {"ESF_DATA_DIR": str(data_dir), "ESF_BROKER_URL": "memory://", "ESF_REDIS_URL": redis_url,
            "ESF_TELEMETRY_KEY_PREFIX": f"esf-test-{unique}:",
            "ESF_TELEMETRY_STATSD_PORT": str(statsd.getsockname()[1]),
            "ESF_SERVICES_TELEMETRY_PUSH_EXPORTERS": "statsd"}


def emit(env: dict[str, str], n: int) -> None:
    """Add ``n`` to the counter from another process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    full.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", EMIT, str(n)], env=full, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def orders_lines(sock: socket.socket) -> list[str]:
    """The StatsD lines of our counter in the packets of one push (read until it has been seen)."""
    lines: list[str] = []
    while not lines:
        packet = sock.recv(65536).decode()
        lines = [line for line in packet.splitlines() if line.startswith("esf.orders.placed")]
    return lines


def run_export(env: dict[str, str]) -> dict[str, object]:
    """One run of the task, in a Foundation of its own (as on another worker)."""
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        result: dict[str, object] = fnd.jobs.get("esf.telemetry.export")()
        return result
    finally:
        fnd.close()


def test_one_push_carries_every_process_s_increments_and_the_next_only_what_was_added(
        env: dict[str, str], statsd: socket.socket) -> None:
    # Given two processes that counted 2 and 3 orders, and exited
    emit(env, 2)
    emit(env, 3)
    # When the export task runs, Then StatsD receives the cluster-wide increase once: 5
    result = run_export(env)
    assert result["exported"] == ["telemetry.statsd"]
    assert orders_lines(statsd) == ["esf.orders.placed.eu:5|c"]
    # When a third process counts 4 and the task runs again (another Foundation: another worker)
    emit(env, 4)
    run_export(env)
    # Then only the increase since the last push is sent
    assert orders_lines(statsd) == ["esf.orders.placed.eu:4|c"]


def test_the_export_refuses_a_partial_view_and_unknown_or_pull_style_exporters(env: dict[str, str],
                                                                            data_dir: Path) -> None:
    # Given no shared telemetry store, When the task runs, Then it refuses to push one process's view (retried)
    alone = Foundation(esf.Settings.from_env({**env, "ESF_TELEMETRY_STORE": "none"}))
    try:
        with pytest.raises(ServiceUnavailable):
            alone.jobs.get("esf.telemetry.export")()
    finally:
        alone.close()
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        export = fnd.jobs.get("esf.telemetry.export")
        # And an unknown exporter, or a pull-style one, is refused (not retried)
        with pytest.raises(ValidationError):
            export(["nosuch"])
        with pytest.raises(ValidationError):
            export(["prometheus"])
        # And the default schedule exists only when a push exporter is named
        assert fnd.services.get("esf.telemetry.export").schedule.enabled  # type: ignore[union-attr]
    finally:
        fnd.close()
    plain = Foundation(esf.Settings(data_dir=str(data_dir)))
    try:
        assert not plain.services.get("esf.telemetry.export").schedule.enabled  # type: ignore[union-attr]
    finally:
        plain.close()
