"""The orders example: aggregates for the order and the stock, a saga for the process.

``order.placed`` starts the ``order_fulfilment`` saga (one instance per order id):

    confirm the order → reserve its stock → charge the card (or, for an invoice,
    wait for ``payment.received`` at most ``payment_timeout_s``) → ship → completed

A step that fails for good (a declined card, stock short) or the payment timeout
compensates what was done, newest first: refund, release the stock, cancel the
order. Every step changes an aggregate and is idempotent through the aggregate's
own state (a redelivered ``reserve`` finds the reservation made), and
``fnd.aggregates.retry`` redoes a change that lost a concurrent save.

Run it with ``esf up --example orders`` (embedded: SQLite, no server) or with
``ESF_BROKER_URL=redis://… ESF_DATABASE_URL=postgresql://…`` set.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import esf
from esf.errors import StepFailed
from esf.foundation import Foundation
from esf.sagas import Saga, StepContext, reacts, step
from esf.sourcing import Aggregate, applies

#: Cards are declined above this amount (the example's payment provider).
CARD_LIMIT = 1000


class Order(Aggregate):
    """An order: placed, confirmed, charged, shipped, or cancelled (and refunded)."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "new"
        self.sku = ""
        self.quantity = 0
        self.amount = 0
        self.charged = False
        self.reason: str | None = None

    def place(self, sku: str, quantity: int, amount: int, payment: str, payment_timeout_s: float) -> None:
        if self.version:
            raise esf.ValidationError(f"order {self.id} is already placed")
        self.record("order.placed", {"order_id": self.id, "sku": sku, "quantity": quantity, "amount": amount,
                                     "payment": payment, "payment_timeout_s": payment_timeout_s},
                    correlation_id=f"order-{self.id}")

    def confirm(self) -> None:
        if self.status == "placed":
            self.record("order.confirmed", {"order_id": self.id})

    def charge(self) -> None:
        if not self.charged:
            self.record("order.charged", {"order_id": self.id, "amount": self.amount})

    def refund(self) -> None:
        if self.charged:
            self.record("order.refunded", {"order_id": self.id, "amount": self.amount})

    def ship(self) -> None:
        if self.status != "shipped":
            self.record("order.shipped", {"order_id": self.id})

    def cancel(self, reason: str) -> None:
        if self.status != "cancelled":
            self.record("order.cancelled", {"order_id": self.id, "reason": reason})

    @applies("order.placed")
    def _placed(self, data: Any) -> None:
        self.status, self.sku, self.quantity, self.amount = "placed", data["sku"], data["quantity"], data["amount"]

    @applies("order.confirmed")
    def _confirmed(self, data: Any) -> None:
        self.status = "confirmed"

    @applies("order.charged")
    def _charged(self, data: Any) -> None:
        self.charged = True

    @applies("order.refunded")
    def _refunded(self, data: Any) -> None:
        self.charged = False

    @applies("order.shipped")
    def _shipped(self, data: Any) -> None:
        self.status = "shipped"

    @applies("order.cancelled")
    def _cancelled(self, data: Any) -> None:
        self.status, self.reason = "cancelled", data["reason"]


class Stock(Aggregate):
    """The stock of one SKU: what is on hand and what each order holds."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.on_hand = 0
        self.reserved: dict[str, int] = {}

    def receive(self, quantity: int) -> None:
        self.record("stock.received", {"sku": self.id, "quantity": quantity})

    def reserve(self, order_id: str, quantity: int) -> None:
        if order_id in self.reserved:
            return
        if quantity > self.on_hand:
            raise StepFailed(f"only {self.on_hand} of {self.id} left, order {order_id} needs {quantity}")
        self.record("stock.reserved", {"sku": self.id, "order_id": order_id, "quantity": quantity})

    def release(self, order_id: str) -> None:
        if order_id in self.reserved:
            self.record("stock.released", {"sku": self.id, "order_id": order_id,
                                           "quantity": self.reserved[order_id]})

    @applies("stock.received")
    def _received(self, data: Any) -> None:
        self.on_hand += data["quantity"]

    @applies("stock.reserved")
    def _reserved(self, data: Any) -> None:
        self.on_hand -= data["quantity"]
        self.reserved = {**self.reserved, data["order_id"]: data["quantity"]}

    @applies("stock.released")
    def _released(self, data: Any) -> None:
        self.on_hand += data["quantity"]
        self.reserved = {k: v for k, v in self.reserved.items() if k != data["order_id"]}


def build(settings: esf.Settings | None = None) -> Foundation:
    """The example's Foundation: its saga and the steps it runs."""
    fnd = Foundation(settings or esf.Settings.from_env())
    repo = fnd.aggregates

    def change(cls: type[Aggregate], id: str, command: str, *args: Any, create: bool = False) -> None:
        def attempt() -> None:
            try:
                agg = repo.load(cls, id)
            except esf.NotFound:
                if not create:
                    raise
                agg = cls(id)
            getattr(agg, command)(*args)
            repo.save(agg)

        repo.retry(attempt, attempts=10)

    def confirm_order(ctx: StepContext) -> None:
        change(Order, ctx.saga_id, "confirm")

    def cancel_order(ctx: StepContext) -> None:
        change(Order, ctx.saga_id, "cancel", ctx.state.get("reason") or "compensated")

    def reserve_stock(ctx: StepContext, sku: str, quantity: int) -> None:
        change(Stock, sku, "reserve", ctx.saga_id, quantity)

    def release_stock(ctx: StepContext, sku: str, quantity: int) -> None:
        change(Stock, sku, "release", ctx.saga_id)

    def charge_card(ctx: StepContext, amount: int) -> dict[str, Any]:
        if amount > CARD_LIMIT and not ctx.state.get("paid"):
            raise StepFailed(f"card declined for {amount}")
        change(Order, ctx.saga_id, "charge")
        return {"charged": amount}

    def refund(ctx: StepContext, amount: int) -> None:
        change(Order, ctx.saga_id, "refund")

    def ship(ctx: StepContext) -> None:
        change(Order, ctx.saga_id, "ship")

    @fnd.saga
    class OrderFulfilment(Saga):
        name = "order_fulfilment"
        starts_on = "order.placed"
        correlate_by = "order_id"
        start = "beginning"

        confirm = step(confirm_order, compensate=cancel_order, retries=5, backoff=0.2)
        reserve = step(reserve_stock, compensate=release_stock, retries=5, backoff=0.2)
        charge = step(charge_card, compensate=refund, retries=5, backoff=0.2)
        deliver = step(ship, retries=5, backoff=0.2)

        def on_start(self, event: Any) -> None:
            self.state.update(event.data)
            self.run(self.confirm)

        def on_step_done(self, step: str, result: Any) -> None:
            if step == "confirm":
                self.run(self.reserve, self.state["sku"], self.state["quantity"])
            elif step == "reserve" and self.state["payment"] == "invoice" and not self.state.get("paid"):
                self.state["awaiting_payment"] = True
                self.set_timeout("payment", float(self.state["payment_timeout_s"]))
            elif step == "reserve":
                self.run(self.charge, self.state["amount"])
            elif step == "charge":
                self.run(self.deliver)
            elif step == "deliver":
                self.complete()

        @reacts("payment.received")
        def paid(self, event: Any) -> None:
            if self.state.get("paid"):
                return
            self.state["paid"] = True
            if self.state.pop("awaiting_payment", False):
                self.cancel_timeout("payment")
                self.run(self.charge, self.state["amount"])

        def fail(self, reason: str) -> None:
            self.state["reason"] = reason
            super().fail(reason)

    return fnd


def make() -> Foundation:
    return build()


def place_order(fnd: Foundation, order_id: str, *, sku: str, quantity: int, amount: int, payment: str = "card",
                payment_timeout_s: float = 600.0) -> None:
    """Place an order (its ``order.placed`` event starts the saga)."""
    order = Order(order_id)
    order.place(sku, quantity, amount, payment, payment_timeout_s)
    fnd.aggregates.save(order)


def stock_up(fnd: Foundation, sku: str, quantity: int) -> None:
    """Receive ``quantity`` of ``sku``."""

    def attempt() -> None:
        try:
            stock = fnd.aggregates.load(Stock, sku)
        except esf.NotFound:
            stock = Stock(sku)
        stock.receive(quantity)
        fnd.aggregates.save(stock)

    fnd.aggregates.retry(attempt, attempts=10)


def run_example(fnd: Foundation, *, should_stop: Callable[[], bool], duration: float | None = None) -> None:
    """Place four orders (shipped, declined, paid by invoice, never paid) and report how each saga ends."""
    say = print
    suffix = uuid.uuid4().hex[:6]
    fnd.sagas.ensure()
    stock_up(fnd, "widget", 10)
    orders: dict[str, dict[str, Any]] = {
        f"ok-{suffix}": {"amount": 120},
        f"declined-{suffix}": {"amount": 5000},
        f"invoice-{suffix}": {"amount": 300, "payment": "invoice", "payment_timeout_s": 60.0},
        f"unpaid-{suffix}": {"amount": 80, "payment": "invoice", "payment_timeout_s": 3.0},
    }
    for order_id, options in orders.items():
        place_order(fnd, order_id, sku="widget", quantity=1, **options)
        say(f"[orders] placed {order_id} {options}")
    ended: dict[str, str] = {}
    paid = False
    started = time.monotonic()
    while not should_stop() and len(ended) < len(orders) and time.monotonic() - started < (duration or 120):
        for order_id in orders:
            try:
                saga = fnd.sagas.get("order_fulfilment", order_id)
            except esf.errors.UnknownSaga:
                continue
            if not paid and order_id.startswith("invoice-") and "payment" in saga.timeouts:
                fnd.events.append(esf.Event("payment.received", {"order_id": order_id}))
                say(f"[orders] payment.received for {order_id}")
                paid = True
            if saga.status not in ("running", "stuck", "compensating") and order_id not in ended:
                ended[order_id] = saga.status
                order = fnd.aggregates.load(Order, order_id)
                say(f"[orders] {order_id}: saga {saga.status}, order {order.status}"
                    f"{f' ({order.reason})' if order.reason else ''}; story: esf events timeline order-{order_id}")
        time.sleep(0.5)
    stock = fnd.aggregates.load(Stock, "widget")
    say(f"[orders] widget stock: {stock.on_hand} on hand, reserved {stock.reserved}")
