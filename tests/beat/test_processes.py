"""Real `esf beat` processes: two at once fire each occurrence once; a killed leader is replaced."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from esf.beat import LEADER_KEY

import esf
from esf.foundation import Foundation
from esf.jobs._schedules import Schedule, schedule_service
from tests.jobs.harness import Worker, wait_for

from . import app
from .app import read_fires
from .conftest import BeatProcess, beat_env

pytestmark = pytest.mark.slow


@pytest.fixture
def beats(env: dict[str, str], fire_log: Path, tmp_path: Path) -> Iterator[list[BeatProcess]]:
    """Two `esf beat` processes started at once (tick 0.2 s, lease 2 s), both declaring a schedule in code."""
    full = {**env, "BEAT_TEST_FIRE_LOG": str(fire_log), "BEAT_TEST_DECLARE": "1"}
    procs = [BeatProcess(full, tmp_path / f"beat-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: all(p.started() for p in procs), timeout=90, message="both beats started")
        wait_for(lambda: any(p.leading() for p in procs), timeout=30, message="a leader")
        yield procs
    finally:
        for p in procs:
            p.stop()


def fires_of(fire_log: Path, name: str) -> list[dict[str, object]]:
    return [f for f in read_fires(fire_log) if str(f["key"]).startswith(f"schedule:{name}:")]


def dues(fires: list[dict[str, object]]) -> list[int]:
    return [int(str(f["key"]).rsplit(":", 1)[1]) for f in fires]


def test_two_beat_processes_fire_each_occurrence_exactly_once(fnd: Foundation, beats: list[BeatProcess],
                                                              fire_log: Path) -> None:
    # Given two beats started at once; When an every-second schedule runs for about 6 seconds
    service = schedule_service(fnd)
    service.add(Schedule(name="s.pair", job="b.tick", every=1))
    wait_for(lambda: len(fires_of(fire_log, "s.pair")) >= 6, timeout=90, message="six fires")
    service.remove("s.pair")
    # A fire in flight at the removal is in the log once its process has exited: stop() waits for that
    for p in beats:
        assert p.stop() == 0, p.log()
    fires = fires_of(fire_log, "s.pair")
    # Then no occurrence was sent twice, the occurrences sit on the schedule's 1 s grid, and the
    # messages in the broker are exactly the fires
    occurrences = dues(fires)
    assert len(set(occurrences)) == len(occurrences) >= 6
    assert all(b > a and (b - a) % 1000 == 0 for a, b in itertools.pairwise(sorted(occurrences)))
    if fnd.settings.broker_kind == "redis":
        assert fnd.redis.llen("default") == len(fires)
    # The code-declared schedule was written once by the two concurrent starts, and the lease was released
    assert service.get("b.hourly").origin == "code"
    assert fnd.jobs.coordinator.get(LEADER_KEY) is None
    late_ms = sorted(float(f["at"]) * 1000 - d for f, d in zip(fires, occurrences, strict=True))  # type: ignore[arg-type]
    print(f"\nfires: {len(fires)} by pids {sorted({f['pid'] for f in fires})}; "  # type: ignore[type-var]
          f"lateness after the due time: median {late_ms[len(late_ms) // 2]:.0f} ms, max {late_ms[-1]:.0f} ms")


def test_when_the_leader_is_killed_the_other_beat_takes_over_and_fires_nothing_twice(
    fnd: Foundation, beats: list[BeatProcess], fire_log: Path
) -> None:
    # Given two beats and an every-second schedule fired by the leader
    schedule_service(fnd).add(Schedule(name="s.takeover", job="b.tick", every=1))
    wait_for(lambda: len(fires_of(fire_log, "s.takeover")) >= 2, timeout=90, message="two fires")
    leader_pid = fires_of(fire_log, "s.takeover")[-1]["pid"]
    leader = next(p for p in beats if p.pid == leader_pid)
    other = next(p for p in beats if p.pid != leader_pid)
    # When the leader is killed with SIGKILL (no lease release)
    leader.kill()
    killed_at = time.monotonic()
    # Then the other beat takes over once the lease expires and goes on firing
    wait_for(lambda: any(f["pid"] == other.pid for f in fires_of(fire_log, "s.takeover")), timeout=90,
             message="a fire by the surviving beat")
    took_over_s = time.monotonic() - killed_at
    wait_for(lambda: sum(f["pid"] == other.pid for f in fires_of(fire_log, "s.takeover")) >= 2, timeout=90,
             message="two fires by the surviving beat")
    assert other.stop() == 0, other.log()
    occurrences = dues(fires_of(fire_log, "s.takeover"))
    assert len(set(occurrences)) == len(occurrences)
    assert all(b > a and (b - a) % 1000 == 0 for a, b in itertools.pairwise(sorted(occurrences)))
    print(f"\ntakeover after SIGKILL: {took_over_s:.1f} s (lease ttl 2 s, tick 0.2 s)")


def test_a_scheduled_job_runs_on_a_real_worker_once_per_occurrence(redis_url: str, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    # Given a worker and a beat on Redis
    env = beat_env("redis", redis_url=redis_url, data_dir=data_dir)
    fnd = app.build(esf.Settings.from_env(env))
    worker = Worker(env, tmp_path / "worker.log", app="tests.beat.app:make", concurrency=1)
    beat = BeatProcess(env, tmp_path / "beat.log")
    try:
        worker.wait_ready()
        wait_for(beat.leading, timeout=90, message="a leading beat")
        # When an every-second schedule of a counting job is added
        schedule_service(fnd).add(Schedule(name="s.work", job="b.count", every=1))
        # Then the worker runs it again and again, each occurrence once
        wait_for(lambda: int(fnd.jobs.coordinator.get("ran-total") or 0) >= 3, timeout=90, message="three runs")
        runs = {k: int(fnd.redis.get(k) or 0) for k in fnd.redis.scan_iter("esf:ran:schedule:s.work:*")}
        assert len(runs) >= 3 and set(runs.values()) == {1}
    finally:
        beat.stop()
        worker.stop()
        fnd.close()
