"""The one circuit breaker: local state, state shared through Redis, named guards, state events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from esf import Foundation, Settings
from esf.errors import CircuitOpen, ValidationError
from esf.resilience import Breakers, CircuitBreaker, RateLimitedEvents, RedisSharedState
from tests.conftest import REDIS_HOST, REDIS_PORT


def _shared(redis_db: int) -> RedisSharedState:
    client: redis.Redis[bytes] = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db)
    return RedisSharedState(lambda: client, "test:breaker:")


def _breaker(shared: RedisSharedState | None, *, reset: float = 30.0, threshold: int = 2) -> CircuitBreaker:
    return CircuitBreaker("payments_api", failure_threshold=threshold, reset_timeout_s=reset, shared=shared)


def test_doubling_reset_timeout_comes_back_after_a_success() -> None:
    now = [0.0]
    b = CircuitBreaker("db", failure_threshold=1, reset_timeout_s=1.0, max_reset_timeout_s=3.0, clock=lambda: now[0])
    b.record_failure()
    assert b.is_open() and b.retry_after() == pytest.approx(1.0)
    now[0] = 1.0
    assert b.allow()  # the trial
    b.record_failure()
    assert b.retry_after() == pytest.approx(2.0)
    now[0] = 3.0
    assert b.allow()
    b.record_failure()
    assert b.retry_after() == pytest.approx(3.0)  # capped
    now[0] = 6.0
    assert b.allow()
    b.record_success()
    b.record_failure()
    assert b.retry_after() == pytest.approx(1.0)


def test_one_process_opening_makes_the_others_fail_fast(redis_db: int) -> None:
    a, b = _breaker(_shared(redis_db)), _breaker(_shared(redis_db))
    assert a.allow() and b.allow()
    a.record_failure()
    a.record_failure()
    assert a.state == "open"
    # b never failed: the shared state refuses its calls.
    assert not b.allow()
    assert b.state == "open" and 25 < b.retry_after() <= 30


def test_only_one_process_probes_and_its_success_closes_for_all(redis_db: int) -> None:
    a, b = _breaker(_shared(redis_db), reset=0.2), _breaker(_shared(redis_db), reset=0.2)
    a.record_failure()
    a.record_failure()
    deadline = time.monotonic() + 10
    while b.state == "open":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.allow()  # b takes the one trial call
    assert not a.allow()  # a waits for it
    assert a.state == "half_open"
    b.record_success()
    assert a.allow() and a.state == "closed"


def test_a_failed_probe_opens_again_for_everyone(redis_db: int) -> None:
    a, b = _breaker(_shared(redis_db), reset=0.2), _breaker(_shared(redis_db), reset=0.2)
    a.record_failure()
    a.record_failure()
    deadline = time.monotonic() + 10
    while not b.allow():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b.record_failure()
    assert a.state == "open" and not a.allow()


def test_unreadable_shared_state_falls_back_to_the_local_one() -> None:
    dead: redis.Redis[bytes] = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    shared = RedisSharedState(lambda: dead, retry_after_s=60)
    b = _breaker(shared)
    assert b.allow()
    b.record_failure()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    # After the first failure the unreachable store is not asked again for a while.
    assert shared.failures == 1


def test_guard_counts_failures_and_refuses_when_open() -> None:
    breakers = Breakers(failure_threshold=2, reset_timeout_s=30, max_reset_timeout_s=None, shared=None)
    calls = []

    @breakers.guard("api")
    def call(fail: bool) -> None:
        calls.append(fail)
        if fail:
            raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(True)
    with pytest.raises(CircuitOpen) as info:
        call(False)
    assert calls == [True, True]
    assert info.value.details["breaker"] == "api" and info.value.code == "circuit_open"
    assert breakers.health()["status"] == "degraded" and "api" in breakers.health()["reason"]


def test_guard_ignores_exceptions_outside_failure_on() -> None:
    breakers = Breakers(failure_threshold=1, reset_timeout_s=30, max_reset_timeout_s=None, shared=None)
    with pytest.raises(KeyError), breakers.guard("api", (ConnectionError,)):
        raise KeyError("not an outage")
    assert breakers.get("api").state == "closed"


@pytest.mark.parametrize("name", ["", "a b", "x" * 101, "ünï", 3])
def test_bad_breaker_names_are_refused(name: object) -> None:
    breakers = Breakers(failure_threshold=1, reset_timeout_s=30, max_reset_timeout_s=None, shared=None)
    with pytest.raises(ValidationError):
        breakers.get(name)  # type: ignore[arg-type]


def test_state_events_are_rate_limited() -> None:
    now = [0.0]
    seen: list[tuple[str, str]] = []
    events = RateLimitedEvents(lambda n, s: seen.append((n, s)), 10.0, clock=lambda: now[0])
    events("api", "open")
    events("api", "closed")
    events("api", "open")
    now[0] = 10.0
    events("api", "open")
    assert seen == [("api", "open"), ("api", "closed"), ("api", "open")]
    assert events.suppressed == 1


def test_foundation_breaker_records_events_and_health(data_dir: Path) -> None:
    with Foundation(Settings(data_dir=str(data_dir))) as fnd:
        for _ in range(fnd.settings.resilience.breaker_failures):
            with pytest.raises(ConnectionError), fnd.breaker("payments_api"):
                raise ConnectionError("refused")
        with pytest.raises(CircuitOpen), fnd.breaker("payments_api"):
            pytest.fail("the block ran while the breaker was open")
        report = fnd.health()
        assert report["services"]["breakers"]["status"] == "degraded"
        assert report["services"]["breakers"]["breakers"]["payments_api"]["state"] == "open"
        assert report["ready"] is True  # degraded is ready
        assert fnd.flush(10)
        types = [e.event_type for e in fnd.events.read_stream("breaker-payments_api")]
        assert types == ["breaker.opened"]


def test_the_cache_tiers_breaker_is_listed_in_health_and_records_its_events(data_dir: Path) -> None:
    # Given a cache whose shared tier is a Redis nobody listens on
    settings = Settings.from_env({"ESF_DATA_DIR": str(data_dir), "ESF_REDIS_URL": "redis://127.0.0.1:1/0",
                                  "ESF_CACHE_BACKEND": "redis", "ESF_CACHE_BREAKER_FAILURES": "2",
                                  "ESF_CACHE_BREAKER_RESET_S": "60",
                                  "ESF_TELEMETRY_ENABLED": "false"})
    with Foundation(settings) as fnd:
        # When reads miss the shared tier until its breaker opens
        for _ in range(3):
            assert fnd.cache.get("missing") is None
        # Then the breaker is the Foundation's, in health and in the events
        report = fnd.health()["services"]["breakers"]
        assert report["breakers"]["cache.redis"]["state"] == "open"
        assert "cache.redis" in report["reason"]
        assert fnd.flush(10)
        assert [e.event_type for e in fnd.events.read_stream("breaker-cache.redis")] == ["breaker.opened"]


def test_uses_must_be_a_list_of_breaker_names(data_dir: Path) -> None:
    with Foundation(Settings(data_dir=str(data_dir))) as fnd:
        def charge() -> None:
            pass

        with pytest.raises(ValidationError) as info:
            fnd.job(name="tests.str_uses", uses="payments_api")(charge)
        assert info.value.errors == {"uses": "not a list"}
        with pytest.raises(ValidationError):
            fnd.job(name="tests.bad_uses", uses=["no spaces"])(charge)
        assert "tests.bad_uses" not in fnd.jobs.names()


def test_subscription_lag_degrades_health(data_dir: Path) -> None:
    from esf import Event, Q

    settings = Settings.from_mapping({"data_dir": str(data_dir), "health": {"subscription_lag_s": 0},
                                      "subscriptions": {"dispatcher": False}})
    with Foundation(settings) as fnd:
        @fnd.subscription("lagging", filter=Q.type("order.paid"))
        def handle(event: object) -> None:
            pass

        assert fnd.health()["services"]["subscriptions"]["status"] == "ok"
        fnd.events.append(Event("order.paid", {"total": 1}, stream_id="order-1"))
        # Lag is the age of the oldest undelivered event: above the 0 s limit as soon as the clock moves.
        deadline = time.monotonic() + 10
        while (report := fnd.health()["services"]["subscriptions"])["status"] != "degraded":
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        assert report["status"] == "degraded" and "lagging" in report["reason"]
        assert report["subscriptions"]["lagging"]["lag_events"] == 1
