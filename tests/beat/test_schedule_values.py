"""Schedule values: validation, cron computation against fixed times, interval grids."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab

from esf.errors import SerializationError, ValidationError
from esf.jobs._schedules import Schedule, next_cron_time, parse_cron


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/5 * * * *", "2026-03-10 10:02:30", "2026-03-10 10:05:00"),
        ("*/5 * * * *", "2026-03-10 10:05:00", "2026-03-10 10:10:00"),
        ("*/5 * * * *", "2026-03-10 23:59:00", "2026-03-11 00:00:00"),
        ("0 3 * * *", "2026-03-10 03:00:00", "2026-03-11 03:00:00"),
        ("30 2 1 * *", "2026-01-31 12:00:00", "2026-02-01 02:30:00"),
        ("0 0 1 1 *", "2026-06-15 08:00:00", "2027-01-01 00:00:00"),
        ("15 10 * * 1-5", "2026-11-27 11:00:00", "2026-11-30 10:15:00"),  # Friday after 10:15 -> Monday
        ("0 12 * * 0", "2026-11-27 11:00:00", "2026-11-29 12:00:00"),  # Sunday is 0
        ("0 0 29 2 *", "2025-03-01 00:00:00", "2028-02-29 00:00:00"),
        ("0 9-17/4 * * *", "2026-03-10 13:00:00", "2026-03-10 17:00:00"),
        ("0,30 * * 12 *", "2026-03-10 13:00:00", "2026-12-01 00:00:00"),
    ],
)
def test_the_next_cron_time_is_the_first_matching_minute_strictly_after_the_given_time(
    expr: str, after: str, expected: str
) -> None:
    # Given a crontab and a fixed time; When the next time is computed; Then it is the expected minute
    assert next_cron_time(parse_cron(expr), at(after)) == at(expected)


def test_the_next_cron_time_agrees_with_celerys_own_computation() -> None:
    # Given expressions and 40 fixed pseudo-random times each
    rnd = random.Random(20261127)
    for expr in ("*/7 */3 * * *", "5 4 13 * 5", "0 12 * 6 0", "30 2 1 * *", "15 10 * * 1-5", "0 0 29 2 *"):
        cron = parse_cron(expr)
        for _ in range(40):
            t = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rnd.randrange(6 * 365 * 86400))
            # When Celery computes the next run after t
            theirs = crontab.from_string(expr)
            theirs.nowfun = lambda t=t: t
            last, delta, _ = theirs.remaining_delta(t, tz=UTC)
            # Then ESF's computation matches it
            assert next_cron_time(cron, t) == (last + delta).replace(second=0, microsecond=0), (expr, t)


@pytest.mark.parametrize("expr", ["61 * * * *", "* * *", "* * * * * *", "*/0 * * * *", "a b c d e", "* * 31 2 *",
                                  "0 0 0 * *", "0 0 * 13 *", ""])
def test_a_malformed_cron_is_a_validation_error_naming_the_cron_field(expr: str) -> None:
    # When a schedule is built with a malformed crontab; Then it is refused, naming the field
    with pytest.raises(ValidationError) as err:
        Schedule(name="s", job="j", cron=expr)
    assert "cron" in err.value.errors


@pytest.mark.parametrize("every", [0, -1, -0.5, float("nan"), float("inf"), True, "5"])
def test_an_interval_that_is_not_a_positive_number_of_seconds_is_refused(every: object) -> None:
    with pytest.raises(ValidationError) as err:
        Schedule(name="s", job="j", every=every)  # type: ignore[arg-type]
    assert "every" in err.value.errors


def test_a_schedule_needs_exactly_one_of_cron_or_every() -> None:
    with pytest.raises(ValidationError) as neither:
        Schedule(name="s", job="j")
    with pytest.raises(ValidationError) as both:
        Schedule(name="s", job="j", cron="* * * * *", every=5)
    assert neither.value.errors and both.value.errors


def test_names_job_names_timezone_and_arguments_are_validated() -> None:
    with pytest.raises(ValidationError) as err:
        Schedule(name="bad name", job="9job", every=1, timezone="Europe/Paris")
    assert set(err.value.errors) == {"name", "job", "timezone"}
    with pytest.raises(SerializationError):
        Schedule(name="s", job="j", every=1, args=(object(),))
    with pytest.raises(SerializationError):
        Schedule(name="s", job="j", every=1, kwargs={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(SerializationError):
        Schedule(name="s", job="j", every=1, args=(b"bytes",))


def test_a_timedelta_interval_is_stored_as_seconds_and_a_cron_is_normalised() -> None:
    assert Schedule(name="s", job="j", every=timedelta(minutes=2)).every == 120.0  # type: ignore[arg-type]
    assert Schedule(name="s", job="j", cron="  */5   *  * * * ").cron == "*/5 * * * *"
    assert Schedule(name="s", job="j", every=1, args=[1, 2]).args == (1, 2)  # type: ignore[arg-type]


def test_an_interval_stays_on_its_grid_and_missed_occurrences_are_skipped_not_replayed() -> None:
    s = Schedule(name="s", job="j", every=10)
    due = at("2026-03-10 10:00:00")
    # Fired on time: the next occurrence is one interval later
    assert s.following(due, due + timedelta(seconds=3)) == at("2026-03-10 10:00:10")
    # Fired an hour late (no beat ran): one fire now, the next on the grid after now
    assert s.following(due, at("2026-03-10 11:00:05")) == at("2026-03-10 11:00:10")
    # Exactly on a grid point: the next one
    assert s.following(due, at("2026-03-10 10:00:10")) == at("2026-03-10 10:00:20")


def test_a_late_cron_fire_moves_to_the_first_cron_time_after_now() -> None:
    s = Schedule(name="s", job="j", cron="*/5 * * * *")
    assert s.following(at("2026-03-10 10:05:00"), at("2026-03-10 10:05:01")) == at("2026-03-10 10:10:00")
    assert s.following(at("2026-03-10 10:05:00"), at("2026-03-10 13:42:00")) == at("2026-03-10 13:45:00")


def test_the_first_run_is_one_interval_after_now_or_the_next_cron_time() -> None:
    now = at("2026-03-10 10:02:30")
    assert Schedule(name="s", job="j", every=60).first_run_after(now) == at("2026-03-10 10:03:30")
    assert Schedule(name="s", job="j", cron="0 * * * *").first_run_after(now) == at("2026-03-10 11:00:00")
    # A re-timed interval with a past run fires one new interval after that run, or now if that is past
    s = Schedule(name="s", job="j", every=60, last_run_at=at("2026-03-10 10:02:00"))
    assert s.first_run_after(now) == at("2026-03-10 10:03:00")
    s = Schedule(name="s", job="j", every=5, last_run_at=at("2026-03-10 09:00:00"))
    assert s.first_run_after(now) == now
