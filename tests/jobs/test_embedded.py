"""The embedded default: SQLite broker and results, no server; `esf up --demo`; a second process enqueues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .harness import ROOT, Worker, settings_env, wait_for


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    env.update(settings_env("", data_dir=str(data_dir)))
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_make_run_demo_shows_jobs_a_retry_a_dead_letter_a_schedule_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Given no server: the embedded default in a fresh directory
    out = tmp_path / "demo.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "esf.cli", "up", "--demo"], cwd=tmp_path, env=_env(
            tmp_path / ".esf"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # When the demo runs
            wait_for(lambda: b"dead-lettered to default.dlq" in out.read_bytes()
                     and b"schedule demo.tick_every_2s fired" in out.read_bytes(), timeout=120,
                     message=f"the demo's dead letter; output so far:\n{out.read_text(errors='replace')[-3000:]}")
        finally:
            # Then Ctrl-C stops worker and beat cleanly
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=90)
    text = out.read_text(errors="replace")
    assert "job demo.greet" in text and "hello, ada" in text
    assert "succeeded after a retry" in text
    assert "subscription demo.receipts caught up" in text and "2 receipts sent" in text
    assert "esf: stopped" in text
    assert code == 0


def test_a_second_process_enqueues_into_a_running_embedded_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / ".esf"
    env = settings_env("", data_dir=str(data_dir))
    worker = Worker(env, tmp_path / "w.log")
    try:
        worker.wait_ready()
        done = subprocess.run(
            [sys.executable, "-m", "esf.cli", "--app", "tests.jobs.apps:make", "jobs", "enqueue", "t.add",
             "--args", "[40, 2]", "--wait", "60", "--json"],
            cwd=ROOT, env=_env(data_dir), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["result"] == 42 and out["job"] == "t.add"
        # and the DLQ is reachable from that second process too
        listed = subprocess.run(
            [sys.executable, "-m", "esf.cli", "--app", "tests.jobs.apps:make", "dlq", "list", "--json"],
            cwd=ROOT, env=_env(data_dir), capture_output=True, text=True, timeout=120,
        )
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == {"entries": [], "next_cursor": None}
    finally:
        worker.stop()
