"""The scheduler in-process: fires, run-time changes, missed occurrences, claims and the lease."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from esf.beat import LEADER_KEY, Beat, occurrence_id, run_beat

import esf
from esf.errors import ValidationError
from esf.foundation import Foundation
from esf.jobs._schedules import Schedule, schedule_service, utcnow
from tests.jobs.harness import wait_for

from . import app
from .app import read_fires
from .conftest import beat_env


@pytest.fixture
def running(fnd: Foundation) -> Iterator[threading.Event]:
    """A beat loop (tick 0.1 s) in a thread of this process."""
    stop = threading.Event()
    thread = threading.Thread(target=run_beat, args=(fnd,), kwargs={"tick_s": 0.1, "stop": stop,
                                                                     "lease_ttl_s": 2.0}, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def fires_of(fire_log: Path, name: str) -> list[dict[str, object]]:
    return [f for f in read_fires(fire_log) if str(f["key"]).startswith(f"schedule:{name}:")]


def due_ms(fire: dict[str, object]) -> int:
    return int(str(fire["key"]).rsplit(":", 1)[1])


def test_an_interval_schedule_fires_repeatedly_on_its_grid(fnd: Foundation, fire_log: Path,
                                                           running: threading.Event) -> None:
    # Given a running beat; When an every-second schedule is added at run time
    schedule_service(fnd).add(Schedule(name="s.tick", job="b.tick", every=1, args=(3,), queue="other"))
    # Then it fires again and again, with its arguments and queue, each occurrence once, on a 1 s grid
    fires = wait_for(lambda: (f := fires_of(fire_log, "s.tick")) and len(f) >= 3 and f, timeout=60,
                     message="three fires")
    assert all(f["args"] == [3] and f["queue"] == "other" and f["job"] == "b.tick" for f in fires)
    dues = [due_ms(f) for f in fires]
    assert len(set(dues)) == len(dues)
    assert all((b - a) % 1000 == 0 and b > a for a, b in itertools.pairwise(dues))
    stored = schedule_service(fnd).get("s.tick")
    assert stored.last_run_at is not None and stored.next_run_at is not None
    assert stored.next_run_at > stored.last_run_at


def test_beat_follows_an_interval_change_and_a_removal_without_restarting(fnd: Foundation, fire_log: Path,
                                                                           running: threading.Event,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    service = schedule_service(fnd)
    # The running loop's ticks, counted (a fire is logged while its tick sends it)
    ticks = itertools.count()
    done = [0]
    tick = Beat.tick

    def counted(self: Beat, now: object = None) -> object:
        try:
            return tick(self, now)  # type: ignore[arg-type]
        finally:
            done[0] = next(ticks) + 1

    monkeypatch.setattr(Beat, "tick", counted)
    # Given a schedule too slow to fire during the test
    service.add(Schedule(name="s.live", job="b.tick", every=3600))
    wait_for(lambda: fnd.jobs.coordinator.get(LEADER_KEY), timeout=30, message="a leader")
    assert fires_of(fire_log, "s.live") == []
    # When its interval becomes one second at run time; Then beat fires it repeatedly
    service.update("s.live", every=1)
    wait_for(lambda: len(fires_of(fire_log, "s.live")) >= 2, timeout=60, message="fires after the change")
    # When it is disabled, then re-enabled with new arguments, beat follows
    service.disable("s.live")
    disabled_at = len(fires_of(fire_log, "s.live"))
    service.update("s.live", enabled=True, args=[42])
    wait_for(lambda: any(f["args"] == [42] for f in fires_of(fire_log, "s.live")), timeout=60,
             message="a fire with the new arguments")
    # When it is removed; Then it stops firing: once two ticks have passed (the one under way may still have
    # fired), 20 more ticks (0.1 s each: twice its 1 s interval) fire nothing
    service.remove("s.live")
    removed_at = len(fires_of(fire_log, "s.live"))
    start = done[0]
    wait_for(lambda: done[0] >= start + 2, timeout=30, message="two ticks after the removal")
    assert len(fires_of(fire_log, "s.live")) <= removed_at + 1
    settled, start = len(fires_of(fire_log, "s.live")), done[0]
    wait_for(lambda: done[0] >= start + 20, timeout=60, message="twenty more ticks")
    assert len(fires_of(fire_log, "s.live")) == settled
    assert disabled_at >= 2


def test_a_cron_schedule_fires_at_its_due_minute_once_and_skips_missed_ones(fnd: Foundation, fire_log: Path) -> None:
    service = schedule_service(fnd)
    s = service.add(Schedule(name="s.cron", job="b.other", cron="*/5 * * * *", kwargs={"label": "c"}))
    assert s.next_run_at is not None and s.next_run_at.minute % 5 == 0 and s.next_run_at.second == 0
    beat = Beat(fnd, tick_s=0.1, lease_ttl_s=2)
    # Before it is due: nothing
    assert beat.tick(now=s.next_run_at - timedelta(seconds=1)) == []
    # When a tick runs just after the due minute: one fire, and the next run is 5 minutes later
    fired = beat.tick(now=s.next_run_at + timedelta(seconds=1))
    assert [f.occurrence for f in fired] == [occurrence_id("s.cron", s.next_run_at)]
    after = service.get("s.cron")
    assert after.next_run_at == s.next_run_at + timedelta(minutes=5)
    assert beat.tick(now=s.next_run_at + timedelta(seconds=2)) == []
    # When beat comes back three hours later: the missed occurrences fire once, not 36 times
    late = after.next_run_at + timedelta(hours=3, minutes=1)
    assert after.next_run_at is not None
    assert len(beat.tick(now=late)) == 1
    assert service.get("s.cron").next_run_at == late.replace(second=0, microsecond=0) + timedelta(minutes=4)
    assert len(fires_of(fire_log, "s.cron")) == 2


def test_two_schedulers_that_both_believe_they_lead_fire_an_occurrence_once(fnd: Foundation, fire_log: Path) -> None:
    # Given two beats; the second one's lease is taken away by force, as after a pause longer than the ttl
    s = schedule_service(fnd).add(Schedule(name="s.once", job="b.tick", every=60))
    a, b = Beat(fnd, tick_s=0.1, lease_ttl_s=2), Beat(fnd, tick_s=0.1, lease_ttl_s=2)
    assert s.next_run_at is not None
    due = s.next_run_at + timedelta(seconds=1)
    fired_a = a.tick(now=due)
    fnd.jobs.coordinator.release_lease(LEADER_KEY, a.owner)
    # When the second one also ticks at the same due time with the state the first one read
    stale = b._fire(s, s.next_run_at, due)
    # Then the occurrence was sent once
    assert len(fired_a) == 1 and stale is None
    assert len(fires_of(fire_log, "s.once")) == 1


def test_only_the_lease_holder_fires(fnd: Foundation, fire_log: Path) -> None:
    s = schedule_service(fnd).add(Schedule(name="s.lease", job="b.tick", every=60))
    assert s.next_run_at is not None
    a, b = Beat(fnd, tick_s=0.1, lease_ttl_s=2), Beat(fnd, tick_s=0.1, lease_ttl_s=2)
    assert a.tick(now=utcnow()) == [] and a.leader
    assert b.tick(now=s.next_run_at + timedelta(seconds=1)) == [] and not b.leader
    assert len(a.tick(now=s.next_run_at + timedelta(seconds=1))) == 1


def test_a_job_not_declared_in_the_beat_process_is_sent_by_name(redis_url: str, data_dir: Path) -> None:
    # Given a schedule of a job that only the workers declare (Redis broker, read back below)
    fnd = app.build(esf.Settings.from_env(beat_env("redis", redis_url=redis_url, data_dir=data_dir)))
    try:
        s = schedule_service(fnd).add(Schedule(name="s.remote", job="elsewhere.job", every=60, args=(1,)),
                                      require_job=False)
        assert s.next_run_at is not None
        # When it is due
        fired = Beat(fnd, tick_s=0.1, lease_ttl_s=2).tick(now=s.next_run_at + timedelta(seconds=1))
        # Then its message names the job, with the occurrence as idempotency key
        assert len(fired) == 1
        body = json.loads(fnd.redis.lindex("default", 0) or b"{}")
        assert body["headers"]["task"] == "elsewhere.job"
        assert body["headers"]["id"] == fired[0].job_id
        assert body["headers"]["esf_idempotency_key"] == fired[0].occurrence
    finally:
        fnd.close()


def test_tick_and_lease_ttl_are_validated(fnd: Foundation) -> None:
    with pytest.raises(ValidationError):
        Beat(fnd, tick_s=0)
    with pytest.raises(ValidationError):
        Beat(fnd, tick_s=1, lease_ttl_s=1.5)


def test_a_stored_record_that_is_not_a_valid_schedule_is_skipped_and_the_others_still_fire(
    fnd: Foundation, fire_log: Path
) -> None:
    # Given a hand-edited record with an invalid cron next to a good schedule
    service = schedule_service(fnd)
    good = service.add(Schedule(name="s.good", job="b.tick", every=60))
    assert service.store.put("s.broken", json.dumps({"job": "b.tick", "cron": "99 * * * *"}), 0, (None, 0.0))
    assert [s.name for s in service.readable()] == ["s.good"]
    with pytest.raises(ValidationError):
        service.list()
    # When beat ticks after the good one is due; Then the good one fires
    assert good.next_run_at is not None
    fired = Beat(fnd, tick_s=0.1, lease_ttl_s=2).tick(now=good.next_run_at + timedelta(seconds=1))
    assert [f.schedule for f in fired] == ["s.good"]
