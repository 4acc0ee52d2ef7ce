"""Emitting metrics: counters, gauges, histograms, timers, events, validation and the label cap."""

from __future__ import annotations

import math
import time

import pytest

from esf.errors import ValidationError
from esf.settings import TelemetrySettings
from esf.telemetry import OVERFLOW_LABEL_VALUE, OVERFLOW_METRIC, Telemetry


@pytest.fixture
def tel():
    t = Telemetry(TelemetrySettings(max_label_sets=3), store=None)
    yield t
    t.close()


def series(snapshot, name):
    return snapshot["metrics"][name]["series"]


def test_a_counter_adds_its_increments_and_keeps_labels_apart(tel):
    # Given two label sets of one counter
    a = tel.counter("billing.charges", {"currency": "eur"})
    b = tel.counter("billing.charges", {"currency": "usd"})
    # When they are incremented
    a.inc()
    a.inc(2)
    b.inc(0.5)
    # Then each series has its own total
    values = {s["labels"]["currency"]: s["value"] for s in series(tel.snapshot(cluster=False), "billing.charges")}
    assert values == {"eur": 3, "usd": 0.5}


def test_a_counter_s_lock_free_incrementers_count_exactly_under_threads_and_reset_to_zero(tel):
    import threading

    # Given a counter with two incrementers (a flag service's hot path) and ordinary increments
    c = tel.counter("flags.evaluated")
    fast = [c.incrementer(), c.incrementer()]
    c.inc(5)
    reads = []

    def work(inc):
        for _ in range(50_000):
            inc()

    # When four threads call them while another thread reads the value again and again
    threads = [threading.Thread(target=work, args=(fast[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        reads.append(c.value)
    for t in threads:
        t.join()
    # Then every call is counted once, and no read saw the count go down
    assert c.value == 200_005
    assert c.value == 200_005  # reading does not count
    assert reads == sorted(reads)
    # And after a reset (a forked child) the incrementers still count, from zero
    c._reset()
    assert c.value == 0
    fast[0]()
    assert c.value == 1


def test_looking_up_the_same_series_twice_returns_the_same_child(tel):
    assert tel.counter("x.y", {"a": "1", "b": "2"}) is tel.counter("x.y", {"b": "2", "a": "1"})


def test_a_gauge_is_set_raised_and_lowered(tel):
    g = tel.gauge("spool.depth")
    g.set(10)
    g.inc(5)
    g.dec(3)
    assert series(tel.snapshot(cluster=False), "spool.depth")[0]["value"] == 12


def test_a_timer_observes_seconds_as_a_context_manager_and_as_a_decorator(tel):
    @tel.timer("work.seconds")
    def work(x):
        return x * 2

    assert work(2) == 4
    with tel.timer("work.seconds"):
        time.sleep(0.02)  # a sleep lasts at least this long: a lower bound of what the timer must record
    with pytest.raises(RuntimeError), tel.timer("work.seconds"):
        raise RuntimeError("boom")
    s = series(tel.snapshot(cluster=False), "work.seconds")[0]
    assert s["count"] == 3
    assert s["sum"] >= 0.02


@pytest.mark.parametrize(
    "name", ["", "1abc", "a-b", "a b", ".a", "a..b", "a.", "é", "x" * 201, None, 3]
)
def test_an_invalid_metric_name_is_refused_with_a_clear_message(tel, name):
    with pytest.raises(ValidationError, match="not valid"):
        tel.counter(name)


@pytest.mark.parametrize("labels", [{"1a": "x"}, {"__x": "y"}, {"a-b": "c"}, {"a": 1}, {"a": None}])
def test_invalid_labels_are_refused(tel, labels):
    with pytest.raises(ValidationError):
        tel.counter("ok.name", labels)


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, -math.inf, "1", None])
def test_a_counter_refuses_negative_or_non_finite_increments(tel, bad):
    c = tel.counter("jobs.done")
    with pytest.raises(ValidationError, match="refused"):
        c.inc(bad)
    assert c.value == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, "3"])
def test_a_gauge_refuses_non_finite_values(tel, bad):
    with pytest.raises(ValidationError):
        tel.gauge("g.v").set(bad)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "x"])
def test_a_histogram_refuses_negative_or_non_finite_observations(tel, bad):
    with pytest.raises(ValidationError):
        tel.histogram("h.v").observe(bad)


def test_one_name_cannot_be_two_kinds_of_metric(tel):
    tel.counter("same.name")
    with pytest.raises(ValidationError, match="is a counter"):
        tel.gauge("same.name")


def test_every_series_of_a_metric_has_the_same_label_names(tel):
    tel.counter("m.labels", {"a": "1"})
    with pytest.raises(ValidationError, match="label names"):
        tel.counter("m.labels", {"b": "1"})


def test_label_sets_beyond_the_cap_go_to_an_overflow_series_and_are_counted(tel):
    # Given a cap of 3 label sets per metric
    for i in range(3):
        tel.counter("users.requests", {"user": f"u{i}"}).inc()
    # When more label sets are used
    for i in range(3, 10):
        tel.counter("users.requests", {"user": f"u{i}"}).inc(2)
    # Then they share one overflow series, and the overflow is counted
    snap = tel.snapshot(cluster=False)
    by_user = {s["labels"]["user"]: s["value"] for s in series(snap, "users.requests")}
    assert by_user == {"u0": 1, "u1": 1, "u2": 1, OVERFLOW_LABEL_VALUE: 14}
    overflow = {s["labels"]["metric"]: s["value"] for s in series(snap, OVERFLOW_METRIC)}
    assert overflow == {"users.requests": 7}


def test_too_many_metric_names_are_refused():
    t = Telemetry(TelemetrySettings(max_metrics=2), store=None)
    try:
        t.counter("a.one")
        t.counter("a.two")
        with pytest.raises(ValidationError, match="max_metrics"):
            t.counter("a.three")
    finally:
        t.close()


def test_events_reach_handlers_attached_to_their_prefix(tel):
    # Given handlers on "esf.jobs" and on everything
    seen = []
    tel.attach("jobs", "esf.jobs", lambda n, m, md: seen.append(("jobs", n, dict(m), dict(md))))
    tel.attach("all", "", lambda n, m, md: seen.append(("all", n, dict(m), dict(md))))
    # When events are emitted
    tel.event("esf.jobs.stop", {"duration_s": 0.5}, {"job": "charge"})
    tel.event("esf.jobsx.stop", {"n": 1})
    # Then prefixes match on whole segments
    assert seen == [
        ("jobs", "esf.jobs.stop", {"duration_s": 0.5}, {"job": "charge"}),
        ("all", "esf.jobs.stop", {"duration_s": 0.5}, {"job": "charge"}),
        ("all", "esf.jobsx.stop", {"n": 1}, {}),
    ]
    assert tel.detach("jobs") is True
    assert tel.detach("jobs") is False


def test_a_handler_that_raises_is_detached_and_the_emitter_is_not_disturbed(tel):
    def bad(name, measurements, metadata):
        raise RuntimeError("broken handler")

    tel.attach("bad", "a", bad)
    tel.event("a.b", {"x": 1})
    tel.event("a.b", {"x": 1})
    assert "bad" not in tel._events.handlers()


def test_event_measurements_must_be_finite_numbers(tel):
    with pytest.raises(ValidationError, match="measurement"):
        tel.event("a.b", {"x": math.nan})
    with pytest.raises(ValidationError):
        tel.event("bad name", {"x": 1})


def test_a_handler_id_is_attached_once(tel):
    tel.attach("h", "a", lambda *a: None)
    with pytest.raises(ValidationError, match="already attached"):
        tel.attach("h", "b", lambda *a: None)
