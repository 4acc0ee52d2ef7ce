"""Scheduled flag changes: `fnd.flags.schedule` / `esf flags set --at`, a configuration batch applied at its time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from esf.cli import build_parser
from esf.cli._flags import parse_at, run_set
from esf.errors import ValidationError
from esf.events import Q
from esf.foundation import Foundation
from tests.jobs.harness import Worker, wait_for
from tests.services import fixtures

pytestmark = pytest.mark.slow

RULE = {"rules": [{"if": {"attr": "country", "op": "in", "value": ["FR", "DE"]}, "serve": {"variant": "on"}}],
        "serve": {"variant": "off"}}


env, worker, fnd = fixtures.env, fixtures.worker, fixtures.fnd


def scheduled_events(fnd: Foundation) -> int:
    return len(fnd.events.query(Q.type("config.batch_scheduled")))


def test_a_scheduled_flag_change_applies_at_its_time_on_a_worker(worker: Worker, fnd: Foundation) -> None:
    # Given a flag that is off for everyone
    base = fnd.flags.set("checkout_v2", {"enabled": False})
    assert fnd.flags.enabled("checkout_v2", {"key": "u1", "country": "FR"}) is False
    # When a rule serving it to FR and DE is scheduled 3 s from now against that version
    at = datetime.now(UTC) + timedelta(seconds=3)
    batch = fnd.flags.schedule("checkout_v2", RULE, at=at, expected_version=base, actor="ops")
    # Then it is a pending scheduled configuration batch
    assert [(b.id, b.state, list(b.changes)) for b in fnd.config.deferred.scheduled()] == [
        (batch.id, "pending", ["flags.checkout_v2"])]
    # And at its time the worker applies it, and this process's evaluation follows
    wait_for(lambda: fnd.flags.enabled("checkout_v2", {"key": "u1", "country": "FR"}), timeout=60,
             message="the scheduled flag change applied")
    assert fnd.flags.enabled("checkout_v2", {"key": "u2", "country": "US"}) is False
    entry = fnd.config.history(1)[0]
    assert (entry.version, entry.actor) == (base + 1, "ops")
    assert entry.at >= at.timestamp()
    wait_for(lambda: fnd.config.deferred.get(batch.id).state == "applied", timeout=30,
             message="the batch recorded as applied")


def test_an_invalid_scheduled_flag_definition_is_refused_at_the_call_site_with_nothing_recorded(
        fnd: Foundation) -> None:
    # Given a flag, and the scheduled batches recorded so far
    fnd.flags.set("search", {})
    before, version = scheduled_events(fnd), fnd.config.version
    at = datetime.now(UTC) + timedelta(hours=1)
    # When invalid definitions are scheduled (an unknown operator, a missing prerequisite, a typo), or a naive time
    for bad, named in (({"rules": [{"if": {"attr": "x", "op": "nope"}, "serve": {"variant": "on"}}]}, "rules"),
                       ({"prerequisites": ["missing"]}, "prerequisites"), ({"enabeld": True}, "enabeld")):
        with pytest.raises(ValidationError) as info:
            fnd.flags.schedule("search", bad, at=at)
        # Then each is refused naming the flag and the rule
        assert "flags.search" in info.value.errors and named in str(info.value)
    with pytest.raises(ValidationError):
        fnd.flags.schedule("search", {"enabled": False}, at=datetime(2030, 1, 1))  # naive
    # And nothing was recorded, sent or written
    assert scheduled_events(fnd) == before
    assert fnd.config.deferred.scheduled() == []
    assert fnd.config.version == version


def test_esf_flags_set_at_schedules_the_change(fnd: Foundation, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rule = tmp_path / "rule.json"
    rule.write_text('{"enabled": true}')
    # When `esf flags set NAME --file rule.json --at 2h` runs (on this Foundation's flags)
    args = build_parser().parse_args(["flags", "set", "beta", "--file", str(rule), "--at", "2h"])
    assert run_set(fnd.flags, args) == 0
    assert "scheduled for" in capsys.readouterr().out
    # Then the change is a pending batch due in two hours, and the flag is not written yet
    (batch,) = fnd.config.deferred.scheduled()
    assert batch.changes == {"flags.beta": {"enabled": True}}
    assert abs((batch.at - datetime.now(UTC) - timedelta(hours=2)).total_seconds()) < 60
    assert fnd.flags.names() == []
    # And a time without its offset, or neither a time nor a delay, is refused
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert parse_at("30m", now) == now + timedelta(minutes=30)
    assert parse_at("2026-12-03T22:00:00+00:00") == datetime(2026, 12, 3, 22, 0, tzinfo=UTC)
    for bad in ("2026-12-03T22:00:00", "soon"):
        with pytest.raises(ValidationError):
            parse_at(bad)
