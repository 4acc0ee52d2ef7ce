"""The application the job tests run in worker subprocesses (settings from ESF_* variables)."""

from __future__ import annotations

import os
import time

from celery.exceptions import SoftTimeLimitExceeded

import esf
from esf.foundation import Foundation
from esf.jobs._deadletter import DeadLetter


class PermanentError(Exception):
    pass


def build(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())
    coord = fnd.jobs.coordinator

    @fnd.job(name="t.add", retries=0)
    def add(x: int, y: int) -> int:
        return x + y

    @fnd.job(name="t.flaky", retries=3, backoff=0.2, max_backoff=0.5)
    def flaky(key: str, fail_times: int) -> str:
        n = coord.incr(f"flaky:{key}", 600)
        if n <= fail_times:
            raise ConnectionError(f"transient failure {n} of {fail_times}")
        return f"ok after {n}"

    @fnd.job(name="t.always_fail", retries=2, backoff=0.1, max_backoff=0.2)
    def always_fail(value: int) -> None:
        if value < 0:
            raise ValueError(f"value must not be negative, got {value}")
        coord.incr("fixed", 600)

    @fnd.job(name="t.non_retryable", retries=5, retry_on=(ConnectionError,))
    def non_retryable(x: int) -> None:
        raise PermanentError(f"cannot handle {x}")

    @fnd.job(name="t.stubborn", retries=0, timeout=1)
    def stubborn(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                continue

    @fnd.job(name="t.record", retries=0, timeout=120)
    def record(key: str, seconds: float) -> int:
        coord.incr(f"exec:{key}", 600)
        time.sleep(seconds)
        return coord.incr(f"done:{key}", 600)

    @fnd.job(name="t.crash", retries=0)
    def crash(key: str) -> None:
        coord.incr(f"crash:{key}", 600)
        os._exit(1)

    @fnd.job(name="t.spawn", retries=0)
    def spawn(x: int) -> str:
        return add.enqueue(x, 1).id

    @fnd.job(name="t.unique", retries=0, unique_for=30)
    def unique(x: int) -> int:
        return x

    @fnd.job(name="t.limited", retries=0, rate_limit="5/s", rate_limit_key="tenant")
    def limited(tenant: str, i: int) -> float:
        return time.time()

    @fnd.job(name="t.echo_cid", retries=0)
    def echo_cid(previous: object = None) -> list[object]:
        from esf.jobs._meta import current_job

        cur = current_job.get()
        return [previous, cur.correlation_id if cur else None]

    @fnd.job(name="t.total", retries=0)
    def total(values: list[int]) -> int:
        return sum(values)

    @fnd.job(name="t.charge_once", retries=0)
    def charge_once(order_id: str) -> bool:
        import sqlalchemy as sa
        from sqlalchemy.orm import Session

        engine = _engine(fnd.settings.effective_database_url)
        with Session(engine) as s:
            with fnd.jobs.once(f"charge:{order_id}", session=s) as first:
                if first:
                    s.execute(sa.text("INSERT INTO charges(order_id) VALUES (:o)"), {"o": order_id})
            s.commit()
        return first

    @fnd.job(name="t.fail_keyed", retries=0)
    def fail_keyed(key: str) -> None:
        coord.incr(f"runs:{key}", 600)
        raise PermanentError(f"cannot handle {key}")

    @fnd.job(name="t.stubborn_keyed", retries=0, timeout=1)
    def stubborn_keyed(key: str, seconds: float) -> None:
        coord.incr(f"runs:{key}", 600)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                continue

    @fnd.job(name="t.gather_item", retries=0, timeout=120)
    def gather_item(key: str, i: int, hold: bool = False, seconds: float = 0.0) -> int:
        coord.incr(f"item-runs:{key}:{i}", 600)
        end = time.monotonic() + 90
        while hold and not coord.get(f"release:{key}") and time.monotonic() < end:
            time.sleep(0.05)  # a straggler: runs until the test releases it
        time.sleep(seconds)
        return i * 10

    @fnd.job(name="t.gather_then", retries=0)
    def gather_then(outcome: dict[str, object]) -> dict[str, object]:
        coord.incr(f"then-runs:{outcome['gather_id']}", 600)
        return outcome

    _inject_faults(fnd, flaky)
    _inject_gather_crash(fnd)
    return fnd


def _inject_gather_crash(fnd: Foundation) -> None:
    """``gather-crash``: the pool process that is to close a gather dies before it sends the callback (once)."""
    coord = fnd.jobs.coordinator
    gathers = fnd.jobs.gathers
    real_act = gathers._act

    def act(gather_id: str, verdict: str) -> None:
        if verdict in ("closing", "failing") and coord.get("gather-crash") == gather_id:
            coord.delete("gather-crash")
            os._exit(1)
        real_act(gather_id, verdict)  # type: ignore[arg-type]

    gathers._act = act  # type: ignore[method-assign]


def _inject_faults(fnd: Foundation, flaky: esf.Job) -> None:  # type: ignore[type-arg]
    """Faults at the publish seams, switched on per job key from a test through the coordinator.

    ``dlq-fault:<key>``: the DLQ refuses every entry of a job whose first argument is ``key``.
    ``retry-fault:<key>``: the next retry of ``t.flaky(key, …)`` cannot be published (once).
    """
    from celery._state import get_current_worker_task
    from kombu.exceptions import OperationalError

    coord = fnd.jobs.coordinator
    dlq = fnd.jobs.dlq
    real_publish = dlq.publish

    def publish(entry: DeadLetter, connection: object = None) -> None:
        if entry.args and isinstance(entry.args[0], str) and coord.get(f"dlq-fault:{entry.args[0]}"):
            raise OperationalError("injected fault: the dead-letter queue refused the entry")
        real_publish(entry, connection)  # type: ignore[arg-type]

    dlq.publish = publish  # type: ignore[method-assign]
    real_apply = flaky.task.apply_async

    def apply_async(args: object = None, kwargs: object = None, **options: object) -> object:
        if get_current_worker_task() is not None and isinstance(args, list | tuple) and args:
            if coord.get(f"retry-fault:{args[0]}"):
                coord.delete(f"retry-fault:{args[0]}")
                raise OperationalError("injected fault: the broker refused the retry")
        return real_apply(args, kwargs, **options)

    flaky.task.apply_async = apply_async


_engines: dict[str, object] = {}


def _engine(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    if url not in _engines:
        _engines[url] = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    return _engines[url]


fnd = None


def make() -> Foundation:
    return build()
