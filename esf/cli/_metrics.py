"""``esf metrics``: the cluster-wide metrics snapshot, and ``esf metrics jobs``: job SLOs from events."""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._common import load_foundation, parse_duration, print_json

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..foundation import Foundation
    from ..telemetry import Telemetry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("metrics", help="print the metrics of every process (cluster-wide)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prefix", default=None, help="only metrics whose names start with this")
    p.add_argument("--local", action="store_true", help="only this process (skip the shared store)")
    p.set_defaults(handler=_metrics)
    sub = p.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND")
    jobs = sub.add_parser("jobs", help="per job and queue: runs, failure rate, run-time percentiles "
                                       "(rolled-up minutes, then the raw tail)")
    jobs.add_argument("--window", default="15m", help="how far back (e.g. 15m, 2h, 1d; default 15m)")
    jobs.add_argument("--job", default=None, help="only this job")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument("--exact", action="store_true",
                      help="read every event: exact percentiles, queue waits and slow-run exemplars")
    jobs.set_defaults(handler=_jobs)


def _metrics(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    return show_snapshot(fnd.telemetry, prefix=args.prefix, as_json=args.json, cluster=not args.local)  # type: ignore[attr-defined]


def _jobs(args: argparse.Namespace) -> int:
    from ..telemetry._slo import iter_job_events

    window = parse_duration(args.window)
    fnd = load_foundation(args.app)
    if args.exact:
        rows = iter_job_events(fnd.events, time.time() - window.total_seconds())  # type: ignore[attr-defined]
        return show_job_slos(rows, window, job=args.job, as_json=args.json)
    return show_job_summaries(fnd, window, job=args.job, as_json=args.json)


def show_job_summaries(fnd: Foundation, window: timedelta, *, job: str | None = None, as_json: bool = False,
                       now: float | None = None) -> int:
    """Print :func:`esf.telemetry.job_summaries` (rollups, then the raw tail) as JSON or a table."""
    from ..errors import SettingsError
    from ..telemetry import job_summaries
    from ..telemetry._rollup import rollup_backend

    try:
        backend = rollup_backend(fnd.events)
    except SettingsError:
        backend = None  # an event store without rollups: every figure from the raw events
    result = job_summaries(fnd.events, backend, window_s=window.total_seconds(),
                           now=time.time() if now is None else now, job=job)
    if as_json:
        print_json(result)
        return 0
    rolled = result["rolled_through"] or "never"
    print(f"jobs from {result['from']} to {result['to']} ({result['rollup_rows']} rolled-up rows through {rolled}, "
          f"{result['raw_events']} raw events after; percentiles within 4.3 %)")
    print(f"{'job':<32} {'queue':<16} {'runs':>7} {'failed':>7} {'fail %':>7}  {'run p50':>9} {'p95':>9} {'p99':>9} "
          f"{'max':>9}")
    for j in result["jobs"]:
        r = j["runtime_s"]
        print(f"{j['job']:<32} {j['queue']:<16} {j['count']:>7} {j['failures']:>7} {100 * j['failure_rate']:>6.2f}%  "
              f"{_fmt(r['p50']):>9} {_fmt(r['p95']):>9} {_fmt(r['p99']):>9} {_fmt(r['max']):>9}")
    return 0


def show_snapshot(telemetry: Telemetry, *, prefix: str | None = None, as_json: bool = False,
                  cluster: bool = True) -> int:
    """Print ``telemetry.snapshot(prefix, cluster)`` as JSON or as a table. Returns the exit code."""
    snap = telemetry.snapshot(prefix=prefix, cluster=cluster)
    if as_json:
        print_json(snap)
        return 0
    head = f"scope: {snap['scope']}, processes: {snap['processes']}"
    if snap.get("degraded"):
        head += f" (degraded: {snap['degraded']})"
    print(head)
    for name, entry in sorted(snap["metrics"].items()):
        for s in entry["series"]:
            labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
            title = f"{name}{{{labels}}}" if labels else name
            print(f"{title:<60} {entry['kind']:<9} {_describe(entry['kind'], s)}")
    return 0


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.6g}"


def _describe(kind: str, s: dict[str, Any]) -> str:
    if kind == "histogram":
        return f"count={s['count']} sum={_fmt(s['sum'])} p50={_fmt(s['p50'])} p90={_fmt(s['p90'])} p99={_fmt(s['p99'])}"
    text = f"{_fmt(s['value'])}"
    if s.get("rates"):
        text += " " + " ".join(f"rate_{k}={_fmt(v)}/s" for k, v in s["rates"].items())
    return text


def show_job_slos(rows: Iterable[Any], window: timedelta, *, job: str | None = None, as_json: bool = False,
                  now: float | None = None) -> int:
    """Print :func:`esf.telemetry.job_slos` of ``rows`` as JSON or as a table. Returns the exit code."""
    from ..telemetry import job_slos

    result = job_slos(rows, window, now=now)
    if job is not None:
        result["jobs"] = {k: v for k, v in result["jobs"].items() if k == job}
    if as_json:
        print_json(result)
        return 0
    print(f"jobs over the last {window} (exact, from stored events)")
    print(f"{'job':<32} {'ok':>6} {'failed':>6}  {'run p50':>9} {'p90':>9} {'p99':>9}  {'wait p50':>9} {'p90':>9} "
          f"{'p99':>9}")
    for name, j in result["jobs"].items():
        r, w = j["runtime_s"], j["queue_wait_s"]
        print(f"{name:<32} {j['succeeded']:>6} {j['failed']:>6}  {_fmt(r.get('p50')):>9} {_fmt(r.get('p90')):>9} "
              f"{_fmt(r.get('p99')):>9}  {_fmt(w.get('p50')):>9} {_fmt(w.get('p90')):>9} {_fmt(w.get('p99')):>9}")
        for b in j["slow"]:
            print(f"    slow ≤ {b['le']:.3g}s: {b['count']} run(s), e.g. {', '.join(b['correlation_ids']) or '-'}")
    return 0
