"""A flag change reaches every process: spawned processes, each with its own Foundation on one Redis store."""

from __future__ import annotations

import multiprocessing
import queue
import time
import uuid

from esf import Foundation, Settings
from esf.settings import ConfigSettings, TelemetrySettings

from . import flag_workers

PROCS = 3


def _collect(reports, want, timeout=60.0):
    """Wait until every process reported ``want`` (variant, reason); returns their config versions."""
    deadline = time.monotonic() + timeout
    latest = {}
    while time.monotonic() < deadline:
        try:
            index, variant, reason, version = reports.get(timeout=0.5)
        except queue.Empty:
            continue
        latest[index] = (variant, reason, version)
        if len(latest) == PROCS and all(v[:2] == want for v in latest.values()):
            return {i: v[2] for i, v in latest.items()}
    raise AssertionError(f"not every process answered {want} within {timeout}s: {latest}")


def test_a_flag_change_a_kill_and_a_rollback_reach_every_process(redis_url, tmp_path):
    # Given three processes evaluating flag "launch" in a loop, on one Redis configuration store
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    ctx = multiprocessing.get_context("spawn")
    reports, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=flag_workers.watcher, args=(redis_url, prefix, str(tmp_path / f"p{i}"), i, reports,
                                                            stop)) for i in range(PROCS)]
    for p in procs:
        p.start()
    writer = Foundation(Settings(redis_url=redis_url, data_dir=str(tmp_path / "w"),
                                 config=ConfigSettings(redis_prefix=prefix),
                                 telemetry=TelemetrySettings(enabled=False)))
    try:
        # (the flag does not exist yet: every process answers with reason error)
        _collect(reports, (None, "error"))
        # When the flag is created for pro users
        created = writer.flags.set("launch", {"rules": [{"if": {"attr": "plan", "op": "eq", "value": "pro"},
                                                         "serve": {"variant": "on"}}], "serve": {"variant": "off"}})
        # Then every process serves it, at that version or later
        assert all(v >= created for v in _collect(reports, ("on", "rule_match")).values())
        # When its kill switch is pulled, every process serves the off variant
        killed = writer.flags.kill("launch")
        assert all(v >= killed for v in _collect(reports, ("off", "kill_switch")).values())
        # And when the configuration is rolled back to the version that created it, every process follows
        writer.config.rollback(created)
        _collect(reports, ("on", "rule_match"))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        writer.close()
    assert all(p.exitcode == 0 for p in procs)
