"""What a named breaker costs per guarded call: local, shared through Redis, next to one Redis round trip.

    python bench/breakers.py [--quick] [--json] [-n CALLS] [--runs R]

Contenders, interleaved round by round (the machine is shared; each round's contenders share its load):

- ``bare``: the guarded work alone (a function that returns at once);
- ``local``: ``with breakers.guard("api"): work()`` with per-process state (no Redis);
- ``shared``: the same with the state shared through Redis (one Lua call per guarded call);
- ``redis_get``: one ``GET`` on the same Redis client: the floor of any shared state.

A run is 20 rounds of ``n / 20`` calls per contender and keeps each contender's best round.
Figures are calls per second; ratios are time ratios per run (median over runs).
The last line is the headline: a shared guarded call's time over one Redis ``GET``'s (target: at most 2).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from _common import REDIS_HOST, REDIS_PORT, Report, lease_redis_db, parse_args

from esf.resilience import Breakers, RedisSharedState

ROUNDS = 20


def work() -> None:
    pass


def best_rate(fn: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - started)


def main() -> None:
    args = parse_args(__doc__ or "", full_n=40_000, quick_n=4_000)
    report = Report("breakers", args, rounds=ROUNDS)
    per_round = max(1, args.n // ROUNDS)
    with lease_redis_db() as db:
        client: redis.Redis[bytes] = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        local = Breakers(failure_threshold=5, reset_timeout_s=30, max_reset_timeout_s=None, shared=None)
        shared = Breakers(failure_threshold=5, reset_timeout_s=30, max_reset_timeout_s=None,
                          shared=RedisSharedState(lambda: client, "bench:breaker:"))
        local_guard, shared_guard = local.guard("api"), shared.guard("api")

        def guarded_local() -> None:
            with local_guard:
                work()

        def guarded_shared() -> None:
            with shared_guard:
                work()

        def get() -> None:
            client.get("bench:key")

        contenders = {"bare": work, "local": guarded_local, "shared": guarded_shared, "redis_get": get}
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for run in range(args.runs):
            best = dict.fromkeys(contenders, 0.0)
            for _ in range(ROUNDS):
                for name, fn in contenders.items():
                    best[name] = max(best[name], best_rate(fn, per_round))
            for name in contenders:
                results[name].append(best[name])
            report.log(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in best.items()))
        client.close()
    for name, values in results.items():
        report.add(f"{name}.calls_per_s", values, "/s")
    report.paired_ratio("local_vs_bare.time", results["bare"], results["local"])
    report.paired_ratio("shared_vs_local.time", results["local"], results["shared"])
    headline = report.paired_ratio("shared_vs_redis_get.time", results["redis_get"], results["shared"])
    report.finish(headline="shared_guard_vs_redis_get", value=headline)


if __name__ == "__main__":
    main()
