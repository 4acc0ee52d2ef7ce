"""The breaker ``broker`` of producers: after three failed publishes in a row, the next fail at once
until the broker is back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from esf import Foundation, Settings
from esf.errors import BatchNotSent, CircuitOpen, SerializationError, ServiceUnavailable
from esf.jobs._service import BROKER_BREAKER_FAILURES
from esf.resilience import CircuitBreaker
from tests.jobs.harness import wait_for
from tests.servers import PrivateRedis


def test_a_half_open_breaker_gets_its_trial_back_when_the_call_gives_no_verdict() -> None:
    now = [0.0]
    b = CircuitBreaker("broker", failure_threshold=1, reset_timeout_s=1.0, clock=lambda: now[0])
    b.record_failure()
    now[0] = 1.0
    assert b.allow()  # the trial
    assert not b.allow()
    b.release()  # e.g. the trial's argument could not be encoded: nothing learnt about the dependency
    assert b.allow()


def _error_of(call: Callable[[], object]) -> Exception | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def _refused(call: Callable[[], object], error: type[ServiceUnavailable]) -> ServiceUnavailable:
    """The error of ``call`` refused by the open breaker (a call that found the breaker half-open is its trial:
    it fails after kombu's retries and opens it again for twice as long, so a few attempts suffice)."""
    for _ in range(6):
        with pytest.raises(ServiceUnavailable) as info:
            call()
        if isinstance(info.value, error) and "breaker" in info.value.details:
            return info.value
    raise AssertionError("the open breaker never refused a publish")


def _enqueue_until_sent(fnd: Foundation) -> None:
    def sent() -> bool:
        try:
            fnd.jobs.enqueue("tests.resilience.produced", 2)
        except ServiceUnavailable:
            return False
        return True

    wait_for(sent, timeout=90, message="an enqueue to reach the restarted broker")


@pytest.mark.slow
def test_enqueues_fail_fast_while_the_broker_is_down_and_flow_once_it_is_back(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    settings = Settings.from_mapping({"data_dir": str(tmp_path / "data"), "broker_url": server.url,
                                      "resilience": {"redis_connect_timeout_s": 0.5, "redis_timeout_s": 1}})
    try:
        with Foundation(settings) as fnd:
            @fnd.job(name="tests.resilience.produced")
            def produced(n: int) -> None:
                pass

            client: redis.Redis[bytes] = redis.Redis.from_url(server.url)
            produced.enqueue(0)
            queue = fnd.settings.jobs.default_queue
            assert client.llen(queue) == 1
            breaker = fnd.jobs.broker_breaker
            assert breaker.state == "closed"
            # Bad arguments are refused at the call site and say nothing about the broker.
            for _ in range(BROKER_BREAKER_FAILURES):
                with pytest.raises(SerializationError):
                    produced.enqueue(object())
            assert breaker.snapshot()["failures"] == 0
            server.stop()
            # Three concurrent producers each spend kombu's retries and fail: the third failure opens the breaker.
            with ThreadPoolExecutor(BROKER_BREAKER_FAILURES) as pool:
                outcomes = list(pool.map(lambda n: _error_of(lambda: produced.enqueue(n)),
                                         range(BROKER_BREAKER_FAILURES)))
            assert all(type(e) is ServiceUnavailable for e in outcomes), outcomes
            assert breaker.state in ("open", "half_open")  # half-open once its 1 s has passed
            assert fnd.health()["services"]["breakers"]["breakers"]["broker"]["state"] != "closed"
            # Once open, the next publishes are refused without trying: CircuitOpen, still a ServiceUnavailable.
            refused = _refused(lambda: produced.enqueue(1), CircuitOpen)
            assert refused.details["breaker"] == "broker"
            batch = _refused(lambda: produced.enqueue_many([(3,), (4,)]), BatchNotSent)
            assert batch.details["breaker"] == "broker" and len(batch.details["not_sent"]) == 2
            assert breaker.rejected >= 2
            # The broker comes back: a trial publish closes the breaker and jobs flow again.
            server.start()
            _enqueue_until_sent(fnd)
            assert breaker.state == "closed"
            produced.enqueue_many([(5,), (6,)])
            assert client.llen(queue) == 4
    finally:
        server.kill()
