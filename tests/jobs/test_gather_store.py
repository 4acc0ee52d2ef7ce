"""The gather store's decisions, the same on Redis and SQLite; and a gather refused at its call site."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import esf
from esf.errors import SerializationError, ValidationError
from esf.foundation import Foundation
from esf.jobs._gather_store import GatherStore, RedisGatherStore, SqliteGatherStore

from . import apps
from .harness import settings_env


@pytest.fixture(params=["redis", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatherStore]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        s: GatherStore = RedisGatherStore(redis.Redis.from_url(url))
    else:
        s = SqliteGatherStore(tmp_path / "gather.sqlite")
    try:
        yield s
    finally:
        s.close()


def _spec(n: int, min_results: int, on_timeout: str = "fail") -> dict[str, Any]:
    return {"n": n, "min_results": min_results, "on_timeout": on_timeout}


def test_only_the_member_that_settles_the_gather_closes_it_and_only_its_redelivery_is_told_again(
        store: GatherStore) -> None:
    store.create("g", _spec(2, 2), 60)
    assert store.record("g", 0, True, "1") == "recorded"
    assert store.record("g", 0, True, "1") == "duplicate"  # a redelivered member changes nothing
    assert store.record("g", 1, True, "2") == "closing"
    # the closer's message redelivered before it finished: told again; any other member: not
    assert store.record("g", 1, True, "2") == "closing"
    assert store.record("g", 0, True, "1") == "duplicate"
    assert store.expire("g") == "settled"
    store.finish("g", "done")
    assert store.record("g", 1, True, "2") == "duplicate"
    state = store.read("g")
    assert state is not None and state.state == "done" and state.reason == "complete"
    assert state.results == {0: 1, 1: 2}


def test_the_deadline_continues_with_enough_results_and_a_straggler_is_kept_late(store: GatherStore) -> None:
    store.create("g", _spec(3, 2, "continue"), 60)
    store.record("g", 0, True, '"a"')
    store.record("g", 2, True, '"c"')
    assert store.expire("g") == "closing"
    assert store.expire("g") == "closing"  # the deadline job redelivered before it finished
    store.finish("g", "done")
    assert store.expire("g") == "settled"
    assert store.record("g", 1, True, '"b"') == "late"
    state = store.read("g")
    assert state is not None and state.reason == "deadline" and state.results == {0: "a", 2: "c"}
    assert state.late == [1]


@pytest.mark.parametrize(("on_timeout", "arrived", "reason"), [
    ("fail", 2, "deadline"), ("continue", 1, "min_results")])
def test_the_deadline_fails_a_gather_with_on_timeout_fail_or_too_few_results(
        store: GatherStore, on_timeout: str, arrived: int, reason: str) -> None:
    store.create("g", _spec(3, 2, on_timeout), 60)
    for i in range(arrived):
        store.record("g", i, True, "0")
    assert store.expire("g") == "failing"
    state = store.read("g")
    assert state is not None and state.state == "failing" and state.reason == reason


def test_failures_that_put_min_results_out_of_reach_fail_the_gather_at_once(store: GatherStore) -> None:
    store.create("g", _spec(3, 2), 60)
    assert store.record("g", 0, False, "ValueError: no") == "recorded"
    assert store.record("g", 1, False, "ValueError: no") == "failing"
    state = store.read("g")
    assert state is not None and state.reason == "min_results" and state.failed == {0: "ValueError: no",
                                                                                    1: "ValueError: no"}


def test_an_unknown_gather_is_reported_not_created(store: GatherStore) -> None:
    assert store.record("nope", 0, True, "1") == "unknown"
    assert store.expire("nope") == "unknown"
    assert store.read("nope") is None


# -- the call site ------------------------------------------------------------------


@pytest.fixture
def producer(redis_url: str, tmp_path: Path) -> Iterator[Foundation]:
    fnd = apps.build(esf.Settings.from_env(settings_env(redis_url, queues=("gq",), data_dir=str(tmp_path))))
    try:
        yield fnd
    finally:
        fnd.close()


@pytest.mark.parametrize(("kwargs", "error", "field"), [
    ({"calls": [("t.gather_item", ["k", math.nan])]}, SerializationError, None),
    ({"calls": [("t.gather_item", ["k", 0]), ("t.gather_item", [b"bytes", 1])]}, SerializationError, None),
    ({"deadline": 0}, ValidationError, "deadline"),
    ({"deadline": -1.5}, ValidationError, "deadline"),
    ({"deadline": timedelta(seconds=-1)}, ValidationError, "deadline"),
    ({"deadline": "10"}, ValidationError, "deadline"),
    ({"min_results": 3}, ValidationError, "min_results"),
    ({"min_results": 0}, ValidationError, "min_results"),
    ({"on_timeout": "ignore"}, ValidationError, "on_timeout"),
    ({"then": "t.nope"}, ValidationError, "then"),
    ({"calls": []}, ValidationError, "calls"),
    ({"calls": "t.gather_item"}, ValidationError, "calls"),
    ({"calls": [("t.gather_item",)]}, ValidationError, "calls[0]"),
])
def test_bad_input_is_refused_at_the_call_site_and_nothing_is_sent_or_stored(
        producer: Foundation, redis_url: str, kwargs: dict[str, Any], error: type[Exception],
        field: str | None) -> None:
    # Given a valid gather of two calls, with one argument made bad
    call: dict[str, Any] = {"calls": [("t.gather_item", ["k", 0]), ("t.gather_item", ["k", 1])],
                            "then": "t.gather_then", "deadline": 10}
    call.update(kwargs)
    # When it is started, Then it is refused with a specific error
    with pytest.raises(error) as caught:
        producer.gather(call.pop("calls"), **call)
    assert isinstance(caught.value, esf.EsfError) and caught.value.code
    if field is not None:
        assert field in caught.value.errors  # type: ignore[attr-defined]
    # and nothing reached the broker or the gather store
    r = redis.Redis.from_url(redis_url)
    assert r.llen("gq") == 0 and r.llen(f"{producer.settings.jobs.service_namespace}.jobs") == 0
    assert list(r.scan_iter("esf:gather:*")) == []


def test_a_valid_gather_stores_its_record_before_it_sends_its_jobs_and_its_deadline(
        producer: Foundation, redis_url: str) -> None:
    g = producer.gather([("t.gather_item", ["k", 0]), ("t.gather_item", ["k", 1])], then="t.gather_then",
                        deadline=10)
    r = redis.Redis.from_url(redis_url)
    assert r.llen("gq") == 2 and r.llen(f"{producer.settings.jobs.service_namespace}.jobs") == 1
    assert g.status()["state"] == "open" and g.status()["missing"] == [0, 1]
