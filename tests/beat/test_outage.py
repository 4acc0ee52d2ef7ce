"""Beat outlives its Redis going away and coming back (a private redis-server, killed and restarted)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from esf.beat import run_beat

import esf
from esf.jobs._schedules import Schedule, schedule_service
from tests.jobs.harness import wait_for
from tests.servers import PrivateRedis

from . import app
from .app import read_fires
from .conftest import BeatProcess, beat_env

pytestmark = pytest.mark.slow


def test_beat_keeps_running_through_a_redis_outage_and_resumes_firing(
    private_redis: PrivateRedis, data_dir: Path, fire_log: Path
) -> None:
    # Given a beat on a private Redis (broker, store and lease) firing an every-second schedule
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    fnd = app.build(esf.Settings.from_env(beat_env("redis", redis_url=url, data_dir=data_dir)),
                    fire_log=str(fire_log))
    stop = threading.Event()
    thread = threading.Thread(target=run_beat, args=(fnd,), kwargs={"tick_s": 0.2, "stop": stop,
                                                                     "lease_ttl_s": 2.0}, daemon=True)
    try:
        schedule_service(fnd).add(Schedule(name="s.outage", job="b.tick", every=1))
        thread.start()
        wait_for(lambda: len(read_fires(fire_log)) >= 2, timeout=60, message="two fires")
        # When Redis dies for a while, then comes back with its data
        private_redis.kill()
        before = len(read_fires(fire_log))
        time.sleep(2)
        assert thread.is_alive()
        private_redis.start()
        # Then beat fires again, and no occurrence was sent twice
        wait_for(lambda: len(read_fires(fire_log)) >= before + 2, timeout=90, message="fires after the outage")
        keys = [f["key"] for f in read_fires(fire_log)]
        assert len(keys) == len(set(keys))
    finally:
        stop.set()
        thread.join(60)
        fnd.close()
    assert not thread.is_alive()


def test_esf_beat_started_while_its_redis_is_down_waits_and_fires_once_it_is_up(
    tmp_path: Path, data_dir: Path, fire_log: Path
) -> None:
    # Given an `esf beat` process started while its Redis (broker, store and lease) is down
    server = PrivateRedis(tmp_path / "late-redis")  # not started
    env = {**beat_env("redis", redis_url=server.url, data_dir=data_dir), "BEAT_TEST_FIRE_LOG": str(fire_log),
           "BEAT_TEST_DECLARE": "1",
           "ESF_RESILIENCE_REDIS_CONNECT_TIMEOUT_S": "0.5", "ESF_RESILIENCE_REDIS_TIMEOUT_S": "1"}
    beat = BeatProcess(env, tmp_path / "beat.log")
    fnd: esf.Foundation | None = None
    try:
        # It keeps running: it reports the outage and waits, it does not exit
        wait_for(lambda: beat.proc.poll() is not None or "unreachable" in beat.log().lower()
                 or "connection refused" in beat.log().lower(), timeout=60, message="beat to meet the outage")
        # and keeps running through several failed ticks
        watched_until = time.monotonic() + 3
        while time.monotonic() < watched_until:
            assert beat.proc.poll() is None, beat.log()
            time.sleep(0.2)
        # When Redis comes up and a schedule is added
        server.start()
        fnd = app.build(esf.Settings.from_env(env))
        service = schedule_service(fnd)
        service.add(Schedule(name="s.late", job="b.tick", every=1))
        # Then the schedules declared in its code are written to the store
        wait_for(lambda: any(s.name == "b.hourly" for s in service.list()), timeout=60,
                 message="the code-declared schedule stored")
        # and beat fires the added one
        wait_for(lambda: beat.proc.poll() is not None or len(read_fires(fire_log)) >= 2, timeout=90,
                 message="fires once Redis is up")
        assert beat.proc.poll() is None, beat.log()
        keys = [f["key"] for f in read_fires(fire_log)]
        assert len(keys) == len(set(keys))
    finally:
        if fnd is not None:
            fnd.close()
        beat.stop()
        server.kill()
