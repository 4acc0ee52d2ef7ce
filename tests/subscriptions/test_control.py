"""Pause, resume, reset and delete, from Python and from `esf subscriptions`; bad input is refused."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from esf import Event, Q
from esf.cli import main
from esf.errors import UnknownSubscription, ValidationError
from tests.jobs.harness import wait_for

from .conftest import Env
from .test_delivery import append_orders

APP = "tests.subscriptions.apps:make"


def cli(monkeypatch: pytest.MonkeyPatch, subs_env: Env, *argv: str) -> int:
    for key, value in subs_env.env.items():
        monkeypatch.setenv(key, value)
    return main(["--app", APP, *argv])


def delivered(subs_env: Env, fnd, expected: list[int], times: int = 1) -> bool:
    fnd.subscriptions.dispatch()  # this test process is the only dispatcher
    seen = subs_env.seen()
    return all(seen.count(p) >= times for p in expected)


def test_a_paused_subscription_sends_nothing_until_resumed_and_a_reset_delivers_again(
        subs_env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a worker that runs handler jobs but no dispatcher, and stored events
    fnd = subs_env.foundation()
    subs_env.worker(ESF_SUBSCRIPTIONS_DISPATCHER="false")
    expected = append_orders(fnd, 30, seed=30)
    # When the subscription is paused from the command line and the dispatcher runs
    assert cli(monkeypatch, subs_env, "subscriptions", "pause", "orders") == 0
    result = fnd.subscriptions.tick("orders")
    # Then nothing is read or sent
    assert (result.read, result.sent) == (0, 0)
    # (the head is read around the status: the job history may append while it is read)
    head_before = fnd.events.head()
    status = fnd.subscriptions.status("orders")
    assert (status.paused, status.cursor, status.queued, status.in_flight) == (True, 0, 0, 0)
    assert head_before <= status.lag_events <= fnd.events.head()
    # When it is resumed
    assert cli(monkeypatch, subs_env, "subscriptions", "resume", "orders") == 0
    # Then everything is delivered once and the checkpoint reaches the head
    wait_for(lambda: delivered(subs_env, fnd, expected), timeout=60, message="delivery after resume")
    wait_for(lambda: delivered(subs_env, fnd, []) and fnd.subscriptions.status("orders").checkpoint
             == fnd.events.head(), timeout=30, message="the checkpoint")
    assert sorted(subs_env.seen()) == expected
    # When it is reset to the position just before its third event
    assert cli(monkeypatch, subs_env, "subscriptions", "reset", "orders", "--to", str(expected[2] - 1)) == 0
    assert fnd.subscriptions.status("orders").checkpoint == expected[2] - 1
    # Then the events from the third on are delivered again, the first two are not
    wait_for(lambda: delivered(subs_env, fnd, expected[2:], times=2), timeout=60, message="redelivery")
    seen = subs_env.seen()
    assert seen.count(expected[0]) == seen.count(expected[1]) == 1
    # And list shows it with its lag
    capsys.readouterr()
    head_before = fnd.events.head()
    assert cli(monkeypatch, subs_env, "subscriptions", "list", "--json") == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed["orders"]["paused"] is False
    assert head_before <= listed["orders"]["head"] <= fnd.events.head()


def test_a_reset_to_a_time_starts_at_the_first_event_recorded_then(subs_env: Env) -> None:
    # Given events recorded before and after a moment
    fnd = subs_env.foundation()
    before = fnd.events.append(Event("order.paid", {"total": 500}, stream_id="a"))[0]
    after = fnd.events.append(Event("order.paid", {"total": 500}, stream_id="b"))[0]
    # When the subscription is reset to the time of the second one
    position = fnd.subscriptions.reset("orders", to_time=after.recorded_at)
    # Then its checkpoint is just before it
    assert position == before.position == after.position - 1
    assert fnd.subscriptions.status("orders").checkpoint == before.position


def test_delete_forgets_the_state_and_unknown_names_and_bad_options_are_refused(subs_env: Env) -> None:
    # Given a subscription with stored state
    fnd = subs_env.foundation()
    fnd.events.append(Event("order.paid", {"total": 500}))
    fnd.subscriptions.reset("orders", to=1)
    # When it is deleted
    fnd.subscriptions.delete("orders")
    # Then its state is gone, and a second delete says so
    assert "orders" not in fnd.subscriptions.backend.names()
    with pytest.raises(UnknownSubscription) as caught:
        fnd.subscriptions.delete("orders")
    assert caught.value.code == "unknown_subscription"
    with pytest.raises(UnknownSubscription):
        fnd.subscriptions.status("nope")
    # And bad options are named at the call site, nothing declared
    with pytest.raises(ValidationError) as bad:
        fnd.subscriptions.subscribe("9bad name", lambda e: None, filter="order.paid", batch_size=0,  # type: ignore[arg-type]
                                    partition_by="user", start=-1, on_dead_letter="ignore")
    assert set(bad.value.errors) == {"name", "filter", "batch_size", "partition_by", "start",
                                                "on_dead_letter"}
    assert [s.name for s in fnd.subscriptions.declared()] == ["orders", "totals"]
    with pytest.raises(ValidationError):
        fnd.subscriptions.subscribe("orders", lambda e: None, filter=Q.type("x"))
    with pytest.raises(ValidationError):
        fnd.subscriptions.reset("orders", to=None, to_time=datetime(2026, 1, 1))


def test_the_dispatcher_reports_each_subscriptions_lag_as_telemetry_gauges(subs_env: Env) -> None:
    # Given stored events and no worker (nothing is handled), and a dispatcher running in this process
    fnd = subs_env.foundation(ESF_TELEMETRY_ENABLED="true", ESF_TELEMETRY_STORE="none",
                              ESF_SUBSCRIPTIONS_LAG_INTERVAL_S="0.1")
    expected = append_orders(fnd, 20, seed=50)
    fnd.subscriptions.start_dispatcher()
    try:
        def lag(name: str) -> dict[str, float]:
            metric = fnd.telemetry.snapshot(cluster=False)["metrics"].get(name)
            return {s["labels"]["subscription"]: s["value"] for s in metric["series"]} if metric else {}

        # When the dispatcher has sent the first batches
        behind = fnd.events.head() - (expected[0] - 1)
        # Then the gauges say how far behind each subscription is, in events and in seconds
        wait_for(lambda: lag("esf.subscriptions.lag_events").get("orders") == behind, timeout=30,
                 message="the lag gauge")
        assert lag("esf.subscriptions.lag_seconds")["orders"] > 0
        status = fnd.subscriptions.status("orders")
        assert status.lag_events == behind and status.in_flight >= 1
    finally:
        fnd.subscriptions.stop_dispatcher()
