"""Cron expressions: parsing a 5-field crontab, and its next occurrence (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ValidationError

__all__ = ["CRON_SEARCH_YEARS", "next_cron_time", "parse_cron"]

#: Years searched for a cron occurrence (``0 0 29 2 1``, a Monday 29 February, recurs within 28 years).
CRON_SEARCH_YEARS = 29


def parse_cron(expr: str) -> Any:
    """Parse a 5-field crontab string (``minute hour day-of-month month day-of-week``) with Celery's ``crontab``.

    Raises:
        ValidationError: the expression is malformed (``errors["cron"]`` says why).
    Returns:
        the ``celery.schedules.crontab``.
    """
    from celery.schedules import crontab

    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != 5:
        raise ValidationError(f"cron: {expr!r} is not a 5-field crontab ('minute hour day-of-month month "
                              "day-of-week', e.g. '*/5 * * * *')", errors={"cron": "expected 5 fields"})
    try:
        return crontab(minute=fields[0], hour=fields[1], day_of_month=fields[2], month_of_year=fields[3],
                       day_of_week=fields[4])
    except Exception as exc:  # celery raises ValueError, TypeError or IndexError for bad fields
        raise ValidationError(f"cron: {expr!r} is not a valid crontab: {exc}", errors={"cron": str(exc)}) from None


def next_cron_time(cron: Any, after: datetime) -> datetime:
    """The first minute strictly after ``after`` (UTC) that matches ``cron`` (a parsed crontab).

    Celery's semantics: the day of the month *and* the day of the week must both
    match (Vixie cron uses *or* when both are restricted). Sunday is 0.

    Raises:
        ValidationError: the expression never matches within :data:`CRON_SEARCH_YEARS` years.
    """
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    minutes, hours = sorted(cron.minute), sorted(cron.hour)
    limit = t + timedelta(days=366 * CRON_SEARCH_YEARS)
    while t < limit:
        if t.month not in cron.month_of_year:
            t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
            continue
        if t.day not in cron.day_of_month or t.isoweekday() % 7 not in cron.day_of_week:
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
            continue
        for h in hours:
            if h < t.hour:
                continue
            first = t.minute if h == t.hour else 0
            m = next((m for m in minutes if m >= first), None)
            if m is not None:
                return t.replace(hour=h, minute=m)
        t = t.replace(hour=0, minute=0) + timedelta(days=1)
    raise ValidationError(f"cron: never matches within {CRON_SEARCH_YEARS} years", errors={"cron": "never matches"})
