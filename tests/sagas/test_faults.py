"""Sagas under faults: a killed worker mid-step, a step that exhausts its retries (stuck, then replayed)."""

from __future__ import annotations

import pytest

from esf import Event
from esf.errors import SagaNotActive
from tests.jobs.harness import wait_for

from .conftest import Env
from .test_flow import _get, _status


@pytest.mark.slow
def test_a_worker_killed_mid_step_leaves_each_effect_applied_once_and_the_saga_completes(saga_env: Env) -> None:
    # Given an order whose charge commits its effect and then hangs in its worker
    fnd = saga_env.foundation()
    first = saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "k-1", "amount": 12, "hang_charge": True}))
    wait_for(lambda: saga_env.redis.lrange("charge_committed", 0, -1), timeout=60, message="the committed charge")
    # When that worker is SIGKILLed with the step unacknowledged, and another worker starts
    first.kill()
    saga_env.worker()
    # Then the step is delivered again, finds its effect recorded, and the saga completes
    wait_for(lambda: _status(fnd, "k-1", "completed"), timeout=90, message="the completed saga")
    effects = saga_env.effects("k-1")
    assert [e for e, _ in effects] == ["reserve", "charge", "ship"]
    assert len({key for _, key in effects}) == 3
    # And the saga's story records each step completed once
    charged = [e for e in fnd.events.read_stream("saga-fulfilment-k-1") if e.event_type == "saga.step_completed"]
    assert [e.data["step"] for e in charged] == ["reserve_stock", "charge_card", "ship_order"]


def test_a_step_that_exhausts_its_retries_leaves_the_saga_stuck_until_its_dead_letter_is_replayed(
        saga_env: Env) -> None:
    # Given an order whose shipping keeps failing
    fnd = saga_env.foundation()
    saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "p-1", "poison_ship": True}))
    # When its retries are spent
    saga = wait_for(lambda: _status(fnd, "p-1", "stuck") and _get(fnd, "p-1"), timeout=60, message="the stuck saga")
    # Then the saga is stuck on that step, visibly, and the step's job is in the DLQ
    assert list(saga.stuck) == ["ship_order:1"]
    assert "carrier API is down" in saga.stuck["ship_order:1"]
    assert [s.status for s in fnd.sagas.list(status="stuck")] == ["stuck"]
    queue = fnd.jobs.get("esf.saga.fulfilment.ship_order").options.queue
    (entry,) = wait_for(lambda: fnd.jobs.dlq.list(queue), timeout=30, message="the dead letter")
    assert entry.args[:2] == ["p-1", "ship_order:1"]
    assert "saga.stuck" in [e.event_type for e in fnd.events.read_stream("saga-fulfilment-p-1")]
    # When the carrier is back and the entry is replayed
    saga_env.redis.set("cured:p-1", 1)
    fnd.jobs.dlq.replay([entry.id])
    # Then the saga resumes and completes, each effect once
    wait_for(lambda: _status(fnd, "p-1", "completed"), timeout=60, message="the resumed saga")
    assert [e for e, _ in saga_env.effects("p-1")] == ["reserve", "charge", "ship"]
    # And a saga that is not stuck cannot be retried
    with pytest.raises(SagaNotActive):
        fnd.sagas.retry("fulfilment", "p-1")


def test_retry_sends_a_stuck_step_again(saga_env: Env) -> None:
    # Given a saga stuck on its shipping
    fnd = saga_env.foundation()
    saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "p-2", "poison_ship": True}))
    wait_for(lambda: _status(fnd, "p-2", "stuck"), timeout=60, message="the stuck saga")
    # When the carrier is back and the saga is retried (instead of a replay)
    saga_env.redis.set("cured:p-2", 1)
    assert fnd.sagas.retry("fulfilment", "p-2").status == "running"
    # Then it completes
    wait_for(lambda: _status(fnd, "p-2", "completed"), timeout=60, message="the retried saga")
    assert [e for e, _ in saga_env.effects("p-2")] == ["reserve", "charge", "ship"]


@pytest.mark.slow
def test_a_timeout_held_by_a_worker_that_is_killed_fires_on_the_next_worker(saga_env: Env) -> None:
    # Given an order waiting 8 seconds for its payment, its timeout held by a worker
    fnd = saga_env.foundation()
    first = saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "t-1", "wait_payment": 8}))
    wait_for(lambda: (s := _get(fnd, "t-1")) is not None and "payment" in s.timeouts, timeout=60,
             message="the payment timeout")
    # When that worker is SIGKILLed and another one starts
    first.kill()
    saga_env.worker()
    # Then the timeout fires there: the stock is released and the saga compensated
    wait_for(lambda: _status(fnd, "t-1", "compensated"), timeout=90, message="the timed-out saga")
    assert [e for e, _ in saga_env.effects("t-1")] == ["reserve", "release"]
    assert "saga.timed_out" in [e.event_type for e in fnd.events.read_stream("saga-fulfilment-t-1")]
