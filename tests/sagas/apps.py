"""The application the saga tests run in worker subprocesses (settings from ESF_* variables).

The ``fulfilment`` saga: ``order.placed`` → reserve → charge → ship → completed, or, with
``wait_payment`` in the order, reserve → wait for ``payment.received`` (timeout ``payment``) → charge → ship.
Each step writes its effect into ``saga_effects`` once (the idempotency ledger, in the same
transaction), so a redelivered step shows as one row. The order's data drives failures:
``fail_ship`` (ship raises StepFailed: refund, then release), ``poison_ship`` (ship raises until
Redis holds ``cured:<order>``: the saga gets stuck), ``hang_charge`` (charge commits its effect,
then hangs once, for the test to kill its worker).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

import esf
from esf.errors import StepFailed
from esf.foundation import Foundation
from esf.sagas import Saga, StepContext, reacts, step

#: Effects of the steps, in the order they committed (id).
EFFECTS_DDL = ("CREATE TABLE IF NOT EXISTS saga_effects (id BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL, "
               "effect TEXT NOT NULL, run_key TEXT NOT NULL)")


def build(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())

    def effect(ctx: StepContext, name: str, order_id: str) -> bool:
        with ctx.once() as tx:
            if tx.first:
                tx.session.execute(sa.text("INSERT INTO saga_effects (order_id, effect, run_key) VALUES (:o, :e, :k)"),
                                   {"o": order_id, "e": name, "k": ctx.key})
            return tx.first

    def reserve(ctx: StepContext, order_id: str) -> dict[str, Any]:
        effect(ctx, "reserve", order_id)
        return {"reserved": True}

    def release(ctx: StepContext, order_id: str) -> None:
        effect(ctx, "release", order_id)

    def charge(ctx: StepContext, order_id: str) -> dict[str, Any]:
        effect(ctx, "charge", order_id)
        if ctx.state.get("hang_charge") and fnd.redis.set(f"hung:{order_id}", 1, nx=True):
            fnd.redis.rpush("charge_committed", order_id)
            time.sleep(120)  # the test kills this worker now
        return {"charged": ctx.state.get("amount")}

    def refund(ctx: StepContext, order_id: str) -> None:
        effect(ctx, "refund", order_id)

    def ship(ctx: StepContext, order_id: str) -> None:
        if ctx.state.get("fail_ship"):
            raise StepFailed(f"no carrier for order {order_id}")
        if ctx.state.get("poison_ship") and not fnd.redis.exists(f"cured:{order_id}"):
            raise RuntimeError(f"the carrier API is down for order {order_id}")
        effect(ctx, "ship", order_id)

    @fnd.saga
    class Fulfilment(Saga):
        name = "fulfilment"
        starts_on = "order.placed"
        correlate_by = "order_id"
        start = "beginning"

        reserve_stock = step(reserve, compensate=release, retries=3, backoff=0.1)
        charge_card = step(charge, compensate=refund, retries=3, backoff=0.1)
        ship_order = step(ship, retries=1, backoff=0.1, max_backoff=0.2)

        def on_start(self, event: Any) -> None:
            self.state.update(event.data)
            self.run(self.reserve_stock, self.id)

        @reacts("payment.received")
        def paid(self, event: Any) -> None:
            if self.state.get("waiting"):
                self.state["waiting"] = False
                self.cancel_timeout("payment")
                self.run(self.charge_card, self.id)

        @reacts("order.noted")
        def noted(self, event: Any) -> None:
            self.state["notes"] = self.state.get("notes", 0) + 1

        def on_step_done(self, step: str, result: Any) -> None:
            if step == "reserve_stock":
                if self.state.get("wait_payment"):
                    self.state["waiting"] = True
                    self.set_timeout("payment", float(self.state["wait_payment"]))
                else:
                    self.run(self.charge_card, self.id)
            elif step == "charge_card":
                self.run(self.ship_order, self.id)
            else:
                self.complete()

    return fnd


def make() -> Foundation:
    return build()
