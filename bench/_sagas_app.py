"""The application bench/sagas.py runs in its worker subprocess (settings from ESF_* variables).

- the ``bench_order`` saga: ``bench.order`` starts it (one instance per correlation id); it runs
  ``one`` → ``two`` → ``three`` (each a step job that increments a Redis counter, with a compensation
  declared) and completes: 4 transitions.
- the baseline, ``bench.chain_one`` → ``bench.chain_two`` → ``bench.chain_three``: the same three steps as
  plain jobs, each enqueueing the next; the last increments ``bench:chains_done``.
"""

from __future__ import annotations

from typing import Any

import esf
from esf.foundation import Foundation
from esf.sagas import Saga, StepContext, step

if __package__:  # bench._sagas_app in a worker (PYTHONPATH is the repository's root)
    from ._common import redis_client
else:  # _sagas_app imported by its benchmark (bench/ on the path)
    from _common import redis_client


def make() -> Foundation:
    fnd = Foundation(esf.Settings.from_env())

    def work(ctx: StepContext, n: int) -> int:
        redis_client().incr("bench:saga_steps")
        return n + 1

    def undo(ctx: StepContext, n: int) -> None:
        redis_client().incr("bench:saga_undone")

    @fnd.saga
    class BenchOrder(Saga):
        name = "bench_order"
        starts_on = "bench.order"
        correlate_by = None  # the event's correlation id: instances' events are handled in parallel
        start = "beginning"

        one = step(work, compensate=undo, retries=0)
        two = step(work, compensate=undo, retries=0)
        three = step(work, compensate=undo, retries=0)

        def on_start(self, event: Any) -> None:
            self.run(self.one, 0)

        def on_step_done(self, step: str, result: Any) -> None:
            following = {"one": self.two, "two": self.three}.get(step)
            if following is None:
                self.complete()
            else:
                self.run(following, int(result))

    @fnd.job(name="bench.chain_three", retries=0)
    def chain_three(n: int) -> None:
        redis_client().incr("bench:saga_steps")
        redis_client().incr("bench:chains_done")

    @fnd.job(name="bench.chain_two", retries=0)
    def chain_two(n: int) -> None:
        redis_client().incr("bench:saga_steps")
        chain_three.enqueue(n + 1)

    @fnd.job(name="bench.chain_one", retries=0)
    def chain_one(n: int) -> None:
        redis_client().incr("bench:saga_steps")
        chain_two.enqueue(n + 1)

    return fnd
