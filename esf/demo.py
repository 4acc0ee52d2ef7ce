"""The demo application that ``make run`` (``esf up --demo``) starts on the embedded default.

It declares a few jobs, enqueues a small workload, and shows jobs running,
one retried into success, one failing into the dead-letter queue, and a
schedule firing. Settings come from the environment (``ESF_*``); with none
set it runs on SQLite under ``.esf/`` with no server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .foundation import Foundation
from .settings import Settings


def build(settings: Settings | None = None) -> Foundation:
    """The demo Foundation and its jobs."""
    fnd = Foundation(settings or Settings.from_env())
    coord = fnd.jobs.coordinator

    @fnd.job(name="demo.greet", retries=0)
    def greet(name: str) -> str:
        return f"hello, {name}"

    @fnd.job(name="demo.charge", retries=3, backoff=0.5, retry_on=(ConnectionError,))
    def charge(order_id: str, amount_cents: int) -> dict[str, Any]:
        attempt = coord.incr(f"demo:charge:{order_id}", 3600)
        if attempt == 1:
            raise ConnectionError("payment gateway timed out (the demo fails the first attempt)")
        return {"order_id": order_id, "charged": amount_cents, "attempts": attempt}

    @fnd.job(name="demo.broken", retries=1, backoff=0.2)
    def broken(order_id: str) -> None:
        raise ValueError(f"order {order_id} has no shipping address")

    @fnd.job(name="demo.tick", retries=0)
    def tick() -> int:
        return coord.incr("demo:ticks", 86400)

    fnd.jobs.schedule("demo.tick_every_2s", job="demo.tick", every=2.0)

    from .events import Q

    @fnd.subscription("demo.receipts", filter=Q.type("demo.order_paid") & (Q.data("total") > 100), retries=2)
    def receipt(event: Any) -> None:
        coord.incr("demo:receipts", 86400)
        print(f"[demo] subscription demo.receipts: receipt for order {event.data['order']} "
              f"(total {event.data['total']}, position {event.position})", flush=True)

    return fnd


def run_demo(fnd: Foundation, *, should_stop: Callable[[], bool], duration: float | None = None) -> None:
    """Enqueue the demo workload and report what happens."""
    say = _printer()
    say(f"embedded foundation: broker={fnd.settings.effective_broker_url}")
    greet = fnd.jobs.get("demo.greet")
    charge = fnd.jobs.get("demo.charge")
    broken = fnd.jobs.get("demo.broken")
    handles = [greet.enqueue(n, correlation_id="demo-1") for n in ("ada", "grace", "linus")]
    paid = charge.enqueue(f"o-{int(time.time())}", 1250, correlation_id="demo-1")
    doomed = broken.enqueue("o-42", correlation_id="demo-1")
    for h in handles:
        say(f"job {h.name}[{h.id[:8]}] succeeded: {h.wait(60)!r}")
    say(f"job {paid.name}[{paid.id[:8]}] succeeded after a retry: {paid.wait(60)!r}")
    try:
        doomed.wait(60)
    except Exception as exc:
        say(f"job {doomed.name}[{doomed.id[:8]}] failed: {exc}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not should_stop():
        entries = [e for e in fnd.jobs.dlq.list() if e.job_id == doomed.id]
        if entries:
            e = entries[0]
            say(f"dead-lettered to {e.queue}.dlq: {e.job} {e.args} after {e.attempts} attempts "
                f"({e.exception_type}: {e.exception_message}); see `esf dlq list`")
            break
        time.sleep(0.5)
    from .events import Event

    orders = [Event("demo.order_paid", {"order": f"o-{n}", "total": total}, stream_id=f"order-o-{n}",
                    correlation_id="demo-1") for n, total in ((1, 50), (2, 150), (3, 250))]
    fnd.events.append(orders)
    say("appended 3 demo.order_paid events; subscription demo.receipts takes those with total > 100")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not should_stop():
        status = fnd.subscriptions.status("demo.receipts")
        if status.checkpoint >= fnd.events.head():
            say(f"subscription demo.receipts caught up: checkpoint {status.checkpoint}, "
                f"{int(fnd.jobs.coordinator.get('demo:receipts') or 0)} receipts sent; see `esf subscriptions list`")
            break
        time.sleep(0.5)
    seen = 0
    started = time.monotonic()
    while not should_stop() and (duration is None or time.monotonic() - started < duration):
        ticks = int(fnd.jobs.coordinator.get("demo:ticks") or 0)
        if ticks > seen:
            say(f"schedule demo.tick_every_2s fired (run {ticks})")
            seen = ticks
        time.sleep(0.5)


def _printer() -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[demo] {text}", flush=True)

    return say


fnd = build()
