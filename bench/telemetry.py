"""Hot-path cost of ESF telemetry against prometheus_client, side by side in one run.

    .venv/bin/python bench/telemetry.py [--quick] [--json] [--ops N] [--runs R]

For each case, N operations are timed R times (median reported) for ESF and
for prometheus_client's own metric doing the same thing. The ESF Telemetry
runs as in production: its background thread collects every second.
The last line printed is the headline: the worst ESF/prometheus_client ratio
of ``counter.inc()`` and ``histogram.observe()`` (target ≤ 1.5).

The job drain with telemetry against without it needs a broker and workers: it is
measured by ``bench/jobs.py --variants`` (esf against esf-notel) and, side by side,
by ``bench/jobs_pair.py esf-notel esf``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PCounter
from prometheus_client import Histogram as PHistogram

from esf.settings import TelemetrySettings
from esf.telemetry import Telemetry

PROM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def timed(fn: Callable[[], None], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def cases(n: int) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    tel = Telemetry(TelemetrySettings(push_interval_s=1.0), store=None)
    reg = CollectorRegistry()
    rng = random.Random(1)
    values = [rng.lognormvariate(-3, 1.5) for _ in range(n)]
    rounds = range(n)

    e_counter = tel.counter("bench.counter")
    p_counter = PCounter("bench_counter", "c", registry=reg)

    def esf_inc() -> None:
        inc = e_counter.inc
        for _ in rounds:
            inc()

    def prom_inc() -> None:
        inc = p_counter.inc
        for _ in rounds:
            inc()

    e_hist = tel.histogram("bench.hist")
    p_hist = PHistogram("bench_hist", "h", registry=reg, buckets=PROM_BUCKETS)

    def esf_observe() -> None:
        obs = e_hist.observe
        for v in values:
            obs(v)

    def prom_observe() -> None:
        obs = p_hist.observe
        for v in values:
            obs(v)

    e_hist_x = tel.histogram("bench.hist_explicit", buckets=list(PROM_BUCKETS))

    def esf_observe_explicit() -> None:
        obs = e_hist_x.observe
        for v in values:
            obs(v)

    p_labelled = PCounter("bench_labelled", "c", ["job", "queue"], registry=reg)
    labels = {"job": "charge", "queue": "billing"}

    def esf_labelled() -> None:
        counter = tel.counter
        for _ in rounds:
            counter("bench.labelled", labels).inc()

    def prom_labelled() -> None:
        lab = p_labelled.labels
        for _ in rounds:
            lab(job="charge", queue="billing").inc()

    def esf_timer() -> None:
        timer = tel.timer("bench.timer")
        for _ in rounds:
            with timer:
                pass

    p_timer = PHistogram("bench_timer", "t", registry=reg, buckets=PROM_BUCKETS)

    def prom_timer() -> None:
        for _ in rounds:
            with p_timer.time():
                pass

    return [
        ("counter.inc()", esf_inc, prom_inc),
        ("histogram.observe() [exp:8 vs 14 buckets]", esf_observe, prom_observe),
        ("histogram.observe() [same 14 buckets]", esf_observe_explicit, prom_observe),
        ("lookup by labels + inc()", esf_labelled, prom_labelled),
        ("timer context manager", esf_timer, prom_timer),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer operations (under a minute)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--ops", type=int, default=None, help="operations per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    args = parser.parse_args()
    n = args.ops or (200_000 if args.quick else 1_000_000)
    results = []
    for name, esf_fn, prom_fn in cases(n):
        # Interleave the two sides so that machine noise hits both alike.
        esf_s, prom_s = [], []
        for _ in range(args.runs):
            esf_s.append(timed(esf_fn, 1))
            prom_s.append(timed(prom_fn, 1))
        e, p = statistics.median(esf_s), statistics.median(prom_s)
        results.append({"case": name, "esf_ns_per_op": e / n * 1e9, "prometheus_client_ns_per_op": p / n * 1e9,
                        "ratio": e / p})
    headline = max(r["ratio"] for r in results[:2])
    meta = {"ops_per_run": n, "runs": args.runs, "python": platform.python_version(),
            "prometheus_client": getattr(prometheus_client, "__version__", "?"), "machine": platform.machine()}
    if args.json:
        print(json.dumps({"meta": meta, "results": results, "headline_ratio": headline}, indent=2))
    else:
        print(f"N={n} ops per run, median of {args.runs} runs, Python {meta['python']}")
        print(f"{'case':<44} {'esf ns/op':>10} {'prom ns/op':>11} {'ratio':>7}")
        for r in results:
            print(f"{r['case']:<44} {r['esf_ns_per_op']:>10.1f} {r['prometheus_client_ns_per_op']:>11.1f} "
                  f"{r['ratio']:>7.2f}")
    print(f"headline: esf/prometheus_client worst ratio (counter.inc, histogram.observe) = {headline:.2f} "
          "(target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
