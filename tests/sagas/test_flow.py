"""Sagas with real workers: the happy path, compensation in reverse order, the timeout, abort."""

from __future__ import annotations

from esf import Event, Q
from esf.errors import UnknownSaga
from esf.foundation import Foundation
from esf.sagas import SagaInstance
from tests.jobs.harness import wait_for

from .conftest import Env


def _get(fnd: Foundation, order_id: str) -> SagaInstance | None:
    try:
        return fnd.sagas.get("fulfilment", order_id)
    except UnknownSaga:
        return None


def _status(fnd: Foundation, order_id: str, *statuses: str) -> bool:
    saga = _get(fnd, order_id)
    return saga is not None and saga.status in statuses


def _waiting(fnd: Foundation, order_id: str) -> bool:
    saga = _get(fnd, order_id)
    return saga is not None and "payment" in saga.timeouts


def test_an_order_runs_its_steps_in_order_and_every_transition_is_on_the_saga_stream(saga_env: Env) -> None:
    # Given a worker and the fulfilment saga
    fnd = saga_env.foundation()
    saga_env.worker()
    # When an order is placed
    fnd.events.append(Event("order.placed", {"order_id": "o-1", "amount": 30}, stream_id="order-o-1",
                            correlation_id="c-o-1"))
    # Then it is reserved, charged and shipped, and the saga completes
    wait_for(lambda: _status(fnd, "o-1", "completed"), timeout=60, message="the completed saga")
    assert [e for e, _ in saga_env.effects("o-1")] == ["reserve", "charge", "ship"]
    # And its stream tells the story, in the order's correlation
    stream = fnd.events.read_stream("saga-fulfilment-o-1")
    assert [e.event_type for e in stream] == ["saga.started", "saga.step_completed", "saga.step_completed",
                                              "saga.step_completed"]
    assert [e.data["version"] for e in stream] == [1, 2, 3, 4]
    assert {e.correlation_id for e in stream} == {"c-o-1"}
    assert stream[-1].data["status"] == "completed"


def test_a_failed_step_compensates_the_completed_steps_in_reverse_order(saga_env: Env) -> None:
    # Given an order whose shipping fails for good after its stock was reserved and its card charged
    fnd = saga_env.foundation()
    saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "o-2", "amount": 30, "fail_ship": True}))
    # Then the charge is refunded first, then the stock released, and the saga ends compensated
    saga = wait_for(lambda: _status(fnd, "o-2", "compensated") and fnd.sagas.get("fulfilment", "o-2"),
                    timeout=60, message="the compensated saga")
    assert [e for e, _ in saga_env.effects("o-2")] == ["reserve", "charge", "refund", "release"]
    assert saga.reason is not None and "no carrier for order o-2" in saga.reason
    types = [e.event_type for e in fnd.events.read_stream("saga-fulfilment-o-2")]
    assert types == ["saga.started", "saga.step_completed", "saga.step_completed", "saga.step_failed",
                     "saga.compensated_step", "saga.compensated_step"]


def test_a_missing_payment_times_out_and_compensates_and_a_payment_in_time_cancels_the_timeout(
        saga_env: Env) -> None:
    # Given two orders waiting for their payment for 2 seconds
    fnd = saga_env.foundation()
    saga_env.worker()
    fnd.events.append([Event("order.placed", {"order_id": "late", "wait_payment": 2}),
                       Event("order.placed", {"order_id": "paid", "wait_payment": 2})])
    wait_for(lambda: _waiting(fnd, "paid"), timeout=60, message="the payment timeout of the paid order")
    # When only one payment arrives in time
    fnd.events.append(Event("payment.received", {"order_id": "paid"}))
    # Then the other order times out: its stock is released and the saga is compensated
    wait_for(lambda: _status(fnd, "late", "compensated"), timeout=60, message="the timed-out saga")
    assert [e for e, _ in saga_env.effects("late")] == ["reserve", "release"]
    late = [e.event_type for e in fnd.events.read_stream("saga-fulfilment-late")]
    assert "saga.timed_out" in late
    # And the paid one completes; its cancelled timeout fires as a no-op
    wait_for(lambda: _status(fnd, "paid", "completed"), timeout=60, message="the paid saga")
    assert [e for e, _ in saga_env.effects("paid")] == ["reserve", "charge", "ship"]
    timeout_runs = Q.type("job.succeeded") & (Q.data("job") == "esf.sagas.timeout")
    wait_for(lambda: len(fnd.events.query(timeout_runs)) >= 2, timeout=30, message="both timeouts fired")
    assert "saga.timed_out" not in [e.event_type for e in fnd.events.read_stream("saga-fulfilment-paid")]
    assert fnd.sagas.get("fulfilment", "paid").status == "completed"


def test_abort_compensates_a_waiting_saga_and_ends_it_aborted(saga_env: Env) -> None:
    # Given an order reserved and waiting a long time for its payment
    fnd = saga_env.foundation()
    saga_env.worker()
    fnd.events.append(Event("order.placed", {"order_id": "o-3", "wait_payment": 600}))
    wait_for(lambda: _waiting(fnd, "o-3"), timeout=60, message="waiting")
    # When it is aborted
    fnd.sagas.abort("fulfilment", "o-3")
    # Then its stock is released and it ends aborted, its timeout forgotten
    saga = wait_for(lambda: _status(fnd, "o-3", "aborted") and fnd.sagas.get("fulfilment", "o-3"), timeout=60,
                    message="the aborted saga")
    assert [e for e, _ in saga_env.effects("o-3")] == ["reserve", "release"]
    assert saga.timeouts == [] and saga.pending == {}
    # And a payment arriving afterwards changes nothing
    fnd.events.append(Event("payment.received", {"order_id": "o-3"}))
    fnd.events.append(Event("order.placed", {"order_id": "o-4"}))
    wait_for(lambda: _status(fnd, "o-4", "completed"), timeout=60, message="a later saga")
    assert [e for e, _ in saga_env.effects("o-3")] == ["reserve", "release"]
