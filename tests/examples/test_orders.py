"""The orders example end to end, on the embedded default (SQLite, no server) and on Redis + PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import esf
from esf import Q
from esf.errors import UnknownSaga
from examples.orders import app
from tests.jobs.harness import Worker, settings_env, wait_for


def _run(env: dict[str, str], log: Path) -> None:
    fnd = app.build(esf.Settings.from_env(env))
    worker = Worker(env, log, app="examples.orders.app:make")
    try:
        # Given stock and a worker running the example
        fnd.sagas.ensure()
        app.stock_up(fnd, "widget", 4)
        worker.wait_ready()
        # When four orders are placed: paid by card, declined, paid by invoice in time, never paid
        app.place_order(fnd, "ok", sku="widget", quantity=1, amount=120)
        app.place_order(fnd, "declined", sku="widget", quantity=1, amount=5000)
        app.place_order(fnd, "invoice", sku="widget", quantity=1, amount=300, payment="invoice",
                        payment_timeout_s=120)
        app.place_order(fnd, "unpaid", sku="widget", quantity=1, amount=80, payment="invoice", payment_timeout_s=2)

        def saga(order_id: str) -> esf.sagas.SagaInstance | None:
            try:
                return fnd.sagas.get("order_fulfilment", order_id)
            except UnknownSaga:
                return None

        wait_for(lambda: (s := saga("invoice")) is not None and "payment" in s.timeouts, timeout=90,
                 message=f"the invoice order waiting for its payment; worker log:\n{worker.log()}")
        fnd.events.append(esf.Event("payment.received", {"order_id": "invoice"}))
        ends = {"ok": "completed", "declined": "compensated", "invoice": "completed", "unpaid": "compensated"}
        wait_for(lambda: all((s := saga(o)) is not None and s.status == end for o, end in ends.items()),
                 timeout=90, message=f"every saga's end; worker log:\n{worker.log()}")
        # Then the paid orders shipped; the declined and the unpaid ones were cancelled, their stock released
        orders = {o: fnd.aggregates.load(app.Order, o) for o in ends}
        assert {o: a.status for o, a in orders.items()} == {"ok": "shipped", "declined": "cancelled",
                                                            "invoice": "shipped", "unpaid": "cancelled"}
        assert "card declined" in (orders["declined"].reason or "")
        assert "timeout payment expired" in (orders["unpaid"].reason or "")
        stock = fnd.aggregates.load(app.Stock, "widget")
        assert (stock.on_hand, stock.reserved) == (2, {"ok": 1, "invoice": 1})
        # And the compensation ran newest first: the stock was released before the order was cancelled
        for order_id in ("declined", "unpaid"):
            released = fnd.events.query(Q.type("stock.released") & (Q.data("order_id") == order_id))
            cancelled = fnd.events.query(Q.type("order.cancelled") & (Q.data("order_id") == order_id))
            assert len(released) == 1 and len(cancelled) == 1
            assert released[0].position < cancelled[0].position
        # And the order's timeline holds the saga's transitions and its steps' jobs
        timeline = fnd.events.query(Q.correlation("order-declined"))
        types = {e.event_type for e in timeline}
        assert {"order.placed", "saga.started", "saga.step_failed", "saga.compensated_step", "job.succeeded"} <= types
    finally:
        worker.discard()
        fnd.close()


def test_the_orders_example_on_the_embedded_default(tmp_path: Path) -> None:
    env = settings_env("", data_dir=str(tmp_path / ".esf"),
                       extra={"ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.2", "ESF_TELEMETRY_ENABLED": "false"})
    env.pop("ESF_JOBS_QUEUES")
    env.pop("ESF_JOBS_DEFAULT_QUEUE")
    _run(env, tmp_path / "worker.log")


@pytest.mark.slow
def test_the_orders_example_on_redis_and_postgresql(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = settings_env(redis_url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(tmp_path / ".esf"),
                       extra={"ESF_DATABASE_URL": pg_url, "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.3",
                              "ESF_TELEMETRY_ENABLED": "false"})
    _run(env, tmp_path / "worker.log")
