"""The schedule service on each store (Redis and SQLite): add, change, remove, declare in code."""

from __future__ import annotations

from datetime import timedelta

import pytest

import esf
from esf.errors import Conflict, NotFound, SerializationError, UnknownJob, UnknownQueue, ValidationError
from esf.foundation import Foundation
from esf.jobs._schedules import Schedule, schedule_decorator, schedule_service, utcnow

from . import app


def test_an_added_schedule_is_stored_with_its_first_run_one_interval_ahead(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    before = utcnow()
    # When a schedule is added
    stored = service.add(Schedule(name="s.one", job="b.tick", every=30, args=(1,), kwargs={}, queue="other"))
    after = utcnow()
    # Then it is stored with a revision and its first run one interval ahead
    assert stored.revision > 0 and stored.last_run_at is None and stored.origin == "runtime"
    assert stored.next_run_at is not None
    assert before + timedelta(seconds=30) <= stored.next_run_at <= after + timedelta(seconds=30)
    assert service.get("s.one") == stored
    assert [s.name for s in service.list()] == ["s.one"]
    assert stored.to_dict()["queue"] == "other"


def test_the_store_is_shared_by_every_foundation_of_the_deployment(fnd: Foundation, env: dict[str, str]) -> None:
    schedule_service(fnd).add(Schedule(name="s.shared", job="b.tick", cron="*/5 * * * *"))
    other = app.build(esf.Settings.from_env(env))
    try:
        assert schedule_service(other).get("s.shared").cron == "*/5 * * * *"
    finally:
        other.close()


def test_bad_input_is_refused_with_a_specific_error_and_nothing_is_stored(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    with pytest.raises(UnknownJob):
        service.add(Schedule(name="s.bad", job="no.such.job", every=5))
    with pytest.raises(UnknownQueue):
        service.add(Schedule(name="s.bad", job="b.tick", every=5, queue="nowhere"))
    with pytest.raises(SerializationError):
        service.add(Schedule(name="s.bad", job="b.tick", every=5, args=({1, 2},)))
    with pytest.raises(ValidationError) as negative:
        service.add(Schedule(name="s.bad", job="b.tick", every=-5))
    assert "every" in negative.value.errors
    with pytest.raises(ValidationError) as cron:
        service.add(Schedule(name="s.bad", job="b.tick", cron="99 * * * *"))
    assert "cron" in cron.value.errors
    assert service.list() == []


def test_adding_a_name_twice_is_a_conflict_and_upsert_replaces_the_definition(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    first = service.add(Schedule(name="s.dup", job="b.tick", every=60))
    with pytest.raises(Conflict):
        service.add(Schedule(name="s.dup", job="b.other", every=5))
    assert service.get("s.dup") == first
    replaced = service.upsert(Schedule(name="s.dup", job="b.other", every=60, kwargs={"label": "x"}))
    assert replaced.job == "b.other" and replaced.revision > first.revision
    # Same timing: the run state is kept
    assert replaced.next_run_at == first.next_run_at
    # Upserting the same definition again changes nothing
    assert service.upsert(Schedule(name="s.dup", job="b.other", every=60, kwargs={"label": "x"})) == replaced


def test_changing_the_timing_reschedules_and_changing_arguments_does_not(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    s = service.add(Schedule(name="s.chg", job="b.tick", every=3600))
    # When only the arguments change, the next run stays
    args_changed = service.update("s.chg", args=[5])
    assert args_changed.args == (5,) and args_changed.next_run_at == s.next_run_at
    assert args_changed.revision > s.revision
    # When the interval changes, the next run is recomputed
    now = utcnow()
    faster = service.update("s.chg", every=2)
    assert faster.every == 2 and faster.next_run_at is not None and faster.next_run_at <= now + timedelta(seconds=3)
    # Giving a cron clears the interval
    cron = service.update("s.chg", cron="0 0 * * *")
    assert cron.every is None and cron.cron == "0 0 * * *"
    assert cron.next_run_at is not None and cron.next_run_at.hour == 0 and cron.next_run_at.minute == 0


def test_an_invalid_update_changes_nothing(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    s = service.add(Schedule(name="s.inv", job="b.tick", every=10))
    with pytest.raises(ValidationError):
        service.update("s.inv", every=0)
    with pytest.raises(ValidationError):
        service.update("s.inv", cron="not a cron")
    with pytest.raises(ValidationError):
        service.update("s.inv", name="renamed")
    with pytest.raises(UnknownQueue):
        service.update("s.inv", queue="nowhere")
    with pytest.raises(UnknownJob):
        service.update("s.inv", job="no.such.job")
    with pytest.raises(NotFound):
        service.update("s.missing", every=3)
    assert service.get("s.inv") == s


def test_disable_enable_and_remove(fnd: Foundation) -> None:
    service = schedule_service(fnd)
    service.add(Schedule(name="s.rm", job="b.tick", every=10))
    assert service.disable("s.rm").enabled is False
    assert service.enable("s.rm").enabled is True
    service.remove("s.rm")
    with pytest.raises(NotFound):
        service.get("s.rm")
    with pytest.raises(NotFound):
        service.remove("s.rm")


def test_a_fire_recorded_against_an_old_revision_is_dropped(fnd: Foundation) -> None:
    # Given a schedule read by the scheduler, then changed at run time
    service = schedule_service(fnd)
    read = service.add(Schedule(name="s.cas", job="b.tick", every=10))
    changed = service.update("s.cas", every=20)
    # When the scheduler records a fire against what it read
    assert service.record_run(read, utcnow(), utcnow() + timedelta(seconds=10)) is False
    # Then the change stands
    assert service.get("s.cas") == changed
    assert service.record_run(changed, utcnow(), utcnow() + timedelta(seconds=20)) is True


def test_code_declared_schedules_are_written_at_sync_and_own_only_their_fields(
    env: dict[str, str], fire_log: object
) -> None:
    # Given an application declaring a schedule in code, and a schedule added at run time
    f = app.build(esf.Settings.from_env(env), declare=True)
    try:
        service = schedule_service(f)
        assert [s.name for s in service.declared()] == ["b.hourly"]
        assert service.list() == []  # nothing written before beat starts
        service.add(Schedule(name="s.runtime", job="b.tick", every=60))
        # When beat starts (sync)
        assert service.sync_declared() == ["b.hourly"]
        declared = service.get("b.hourly")
        assert (declared.origin, declared.every, declared.args, declared.job) == ("code", 3600.0, (7,),
                                                                                "tests.beat.app.build.hourly")
        # A second start with the same code rewrites nothing (next_run_at does not move)
        assert service.sync_declared() == []
        assert service.get("b.hourly") == declared
        # A run-time disable survives a restart; a run-time change of a code-owned field does not
        service.update("b.hourly", enabled=False, args=[8])
        assert service.sync_declared() == ["b.hourly"]
        after = service.get("b.hourly")
        assert after.enabled is False and after.args == (7,)
        assert service.get("s.runtime").origin == "runtime"
    finally:
        f.close()


def test_the_schedule_decorator_declares_the_job_and_refuses_bad_schedules_at_declaration(fnd: Foundation) -> None:
    @schedule_decorator(fnd, cron="0 * * * *", kwargs={"x": 1}, queue="other")
    def hourly_report(x: int) -> int:
        return x

    assert fnd.jobs.get(hourly_report.name) is hourly_report
    assert hourly_report.options.queue == "other"
    declared = schedule_service(fnd).declared()[0]
    assert (declared.name, declared.cron, declared.queue) == (hourly_report.name, "0 * * * *", "other")
    with pytest.raises(ValidationError):
        schedule_decorator(fnd, cron="0 * * *")
    with pytest.raises(UnknownQueue):
        schedule_decorator(fnd, every=5, queue="nowhere")

    # An existing Job can be scheduled too
    job = fnd.jobs.get("b.other")
    assert schedule_decorator(fnd, "b.other.every", every=timedelta(minutes=5))(job) is job
    assert schedule_service(fnd).declared()[1].every == 300.0
