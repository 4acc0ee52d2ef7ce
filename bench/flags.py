"""Feature-flag evaluation: ESF, a plain Python function doing the same work, and the OpenFeature SDK, side by side.

    python bench/flags.py [--quick] [--json] [-n CONTEXTS] [--runs R]

The flag: one rule of two attribute conditions (``country in [FR, DE, IT]`` and
``age >= 18``) serving a sticky 30 % rollout (sha1 of flag and key mapped to
10,000 buckets), everything else off. Contenders, interleaved round by round on
the same contexts (the machine is shared; each round's contenders share its load):

- ``plain``: a Python function with the same comparisons and the same hash, no API around it;
- ``esf``: ``fnd.flags.evaluate(name, context)`` of a Foundation (configuration on SQLite,
  telemetry on: every evaluation is counted by flag, variant and reason);
- ``esf_variant``: ``fnd.flags.variant`` (the same, returning the variant name);
- ``openfeature``: ``client.get_boolean_details`` of the ``openfeature-sdk`` with ``EsfProvider``.

A run is 10 interleaved rounds (the OpenFeature one over a tenth of the contexts: it is slow)
and keeps each contender's best round. Figures are evaluations per second per contender;
ratios are time ratios per run (median over runs).
The last line is the headline: the time of an ESF evaluation over the plain function's (target: at most 3).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, parse_args

NAME = "checkout"
#: Interleaved rounds per run.
ROUNDS = 10
COUNTRIES = frozenset({"FR", "DE", "IT"})
DEFINITION = {
    "rules": [{"if": {"all": [{"attr": "country", "op": "in", "value": sorted(COUNTRIES)},
                              {"attr": "age", "op": "gte", "value": 18}]},
               "serve": {"percentage": 30}}],
    "serve": {"variant": "off"},
}


def plain(ctx: dict[str, Any]) -> bool:
    """The same flag as a plain function: the two comparisons, then the same sticky hash."""
    if ctx["country"] in COUNTRIES and ctx["age"] >= 18:
        digest = hashlib.sha1(f"{NAME}:{ctx['key']}".encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[:8], "big") % 10_000 < 3000
    return False


def contexts(n: int) -> list[dict[str, Any]]:
    countries = ["FR", "DE", "IT", "US", "ES", "FR"]
    return [{"key": f"user-{i}", "country": countries[i % len(countries)], "age": 12 + (i * 7) % 60}
            for i in range(n)]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], full_n=100_000, quick_n=10_000, full_runs=5)
    report = Report("flags", args)
    from esf.plugins.openfeature import EsfProvider
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext

    import esf

    with tempfile.TemporaryDirectory() as tmp:
        fnd = esf.Foundation(esf.Settings(data_dir=tmp))
        try:
            fnd.flags.set(NAME, DEFINITION)
            ctxs = contexts(args.n)
            # The contenders agree on every context before anything is timed.
            for ctx in ctxs[:5000]:
                assert fnd.flags.evaluate(NAME, ctx).value == plain(ctx), ctx
            api.set_provider(EsfProvider(fnd.flags), "bench")
            client = api.get_client("bench")
            of_ctxs = [EvaluationContext(c["key"], {"country": c["country"], "age": c["age"]})
                       for c in ctxs[:max(1000, len(ctxs) // 10)]]
            for c, o in zip(ctxs, of_ctxs, strict=False):
                assert client.get_boolean_details(NAME, False, o).value == plain(c)
            evaluate, variant = fnd.flags.evaluate, fnd.flags.variant
            # Each loop calls its contender the way an application would, with nothing in between.
            def run_plain() -> float:
                start = time.perf_counter()
                for ctx in ctxs:
                    plain(ctx)
                return len(ctxs) / (time.perf_counter() - start)

            def run_esf() -> float:
                start = time.perf_counter()
                for ctx in ctxs:
                    evaluate(NAME, ctx)
                return len(ctxs) / (time.perf_counter() - start)

            def run_variant() -> float:
                start = time.perf_counter()
                for ctx in ctxs:
                    variant(NAME, ctx)
                return len(ctxs) / (time.perf_counter() - start)

            def run_openfeature() -> float:
                get = client.get_boolean_details
                start = time.perf_counter()
                for ctx in of_ctxs:
                    get(NAME, False, ctx)
                return len(of_ctxs) / (time.perf_counter() - start)

            contenders: dict[str, Callable[[], float]] = {"plain": run_plain, "esf": run_esf,
                                                          "esf_variant": run_variant, "openfeature": run_openfeature}
            samples: dict[str, list[float]] = {k: [] for k in contenders}
            for run in range(args.runs):
                # A run is ROUNDS interleaved rounds; it keeps each contender's best round (timeit's advice:
                # slower rounds measure the other processes of this shared machine, not the code).
                best = dict.fromkeys(contenders, 0.0)
                for _ in range(ROUNDS):
                    for name, measure in contenders.items():
                        best[name] = max(best[name], measure())
                for name, rate in best.items():
                    samples[name].append(rate)
                report.log(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in
                                                                     samples.items()))
            for name, values in samples.items():
                report.add(f"{name}.evals_per_s", values, "/s")
            report.paired_ratio("esf_vs_plain.time", samples["plain"], samples["esf"])
            report.paired_ratio("esf_variant_vs_plain.time", samples["plain"], samples["esf_variant"])
            report.paired_ratio("openfeature_vs_esf.time", samples["esf"], samples["openfeature"])
            report.paired_ratio("openfeature_vs_plain.time", samples["plain"], samples["openfeature"])
            api.clear_providers()
        finally:
            fnd.close()
    report.finish("esf_vs_plain_time", report.doc["ratios"]["esf_vs_plain.time"])


if __name__ == "__main__":
    main()
