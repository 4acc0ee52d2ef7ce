"""Helpers shared by the benchmarks in bench/: arguments, medians, ratios, output, Redis DB leases,
PostgreSQL databases of their own, ESF worker subprocesses, and the workers' Redis client.

Every benchmark takes ``--quick`` (well under a minute: fewer items, one run) and
``--json`` (one JSON document on stdout), runs the ESF path and its baseline side by
side in the same run, reports medians, and prints its headline ratio on the LAST line.

    from _common import parse_args, median, ratio, Report

    args = parse_args("What this measures", full_n=20_000, quick_n=2_000)
    report = Report("jobs", args)
    report.add("redis.esf.drain_per_s", [812.0, 790.5, 801.2])
    report.ratio("redis.esf_vs_bare.drain", report.median("redis.esf.drain_per_s"), 870.0)
    report.finish(headline="esf_vs_bare_drain_redis", value=0.92)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
AMQP_URL = os.environ.get("ESF_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG_ADMIN_URL = os.environ.get("ESF_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def parse_args(description: str, *, full_n: int, quick_n: int, full_runs: int = 3,
               argv: Sequence[str] | None = None,
               extra: Sequence[tuple[Sequence[str], dict[str, Any]]] = ()) -> argparse.Namespace:
    """Parse the common options: ``--quick``, ``--json``, ``-n``, ``--runs``.

    Parameters:
        description: what the benchmark measures (``--help``).
        full_n, quick_n: items per run in the full and the ``--quick`` mode.
        full_runs: runs in the full mode (``--quick`` does one).
        extra: more ``(flags, kwargs)`` for ``add_argument``.

    Returns:
        The namespace, with ``n`` and ``runs`` resolved from the mode.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"{quick_n} items, one run (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("-n", type=int, default=None, help=f"items per run (default {full_n}, --quick {quick_n})")
    parser.add_argument("--runs", type=int, default=None, help=f"runs (default {full_runs}, --quick 1)")
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    args.n = args.n or (quick_n if args.quick else full_n)
    args.runs = args.runs or (1 if args.quick else full_runs)
    return args


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, nearest-rank (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when either is missing or the denominator is zero."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    return info


class Report:
    """Collects a benchmark's figures, prints them as text or JSON, and ends with the headline line."""

    def __init__(self, name: str, args: argparse.Namespace, **params: Any) -> None:
        self.name = name
        self.as_json: bool = args.json
        self.doc: dict[str, Any] = {
            "benchmark": name,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "mode": "quick" if args.quick else "full",
            "n": args.n,
            "runs": args.runs,
            "params": params,
            "machine": machine(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "figures": {},
            "ratios": {},
        }

    def log(self, message: str) -> None:
        """Progress, on stderr (stdout carries only results)."""
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def add(self, key: str, values: Sequence[float], unit: str = "") -> float:
        """Record the samples of ``key``; returns their median."""
        m = median(values)
        self.doc["figures"][key] = {"median": m, "samples": list(values), "unit": unit}
        return m

    def median(self, key: str) -> float:
        item = self.doc["figures"].get(key)
        return float(item["median"]) if item else math.nan

    def samples(self, key: str) -> list[float]:
        item = self.doc["figures"].get(key)
        return list(item["samples"]) if item else []

    def ratio(self, key: str, numerator: float, denominator: float) -> float:
        value = ratio(numerator, denominator)
        self.doc["ratios"][key] = value
        return value

    def paired_ratio(self, key: str, numerators: Sequence[float], denominators: Sequence[float]) -> float:
        """The median of per-run ratios: run ``i`` of one side against run ``i`` of the other.

        Contenders measured in the same run share the machine's load at that moment, so
        pairing them is more robust on a busy machine than the ratio of two medians.
        """
        value = median([ratio(a, b) for a, b in zip(numerators, denominators, strict=True)])
        self.doc["ratios"][key] = value
        return value

    def finish(self, headline: str, value: float) -> None:
        """Print everything; the last line is the headline ratio."""
        self.doc["headline"] = {"name": headline, "value": value}
        if self.as_json:
            print(json.dumps(self.doc, indent=2, sort_keys=True, default=_json_default))
        else:
            print(f"# {self.name}: n={self.doc['n']} runs={self.doc['runs']} ({self.doc['mode']}), "
                  f"{self.doc['machine'].get('cpus')} CPUs, load {self.doc['machine'].get('load_avg_1m')}")
            width = max((len(k) for k in self.doc["figures"]), default=10)
            for key, item in self.doc["figures"].items():
                samples = ", ".join(f"{s:.1f}" for s in item["samples"])
                print(f"{key:<{width}}  {item['median']:>10.1f} {item['unit']:<6} [{samples}]")
            width = max((len(k) for k in self.doc["ratios"]), default=10)
            for key, r in self.doc["ratios"].items():
                print(f"{key:<{width}}  {r:>6.2f}")
        print(f"{headline}: {value:.2f}")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


@contextlib.contextmanager
def lease_redis_db(timeout_s: float = 300) -> Iterator[int]:
    """An exclusive, flushed Redis database (1-15), leased with the same keys the test suite uses.

    Raises:
        RuntimeError: no database became free within ``timeout_s``.
    """
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for db in range(15, 0, -1):
                if admin.set(f"esf-test:db-lease:{db}", token, nx=True, ex=3600):
                    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
                    client.flushdb()
                    try:
                        yield db
                    finally:
                        client.flushdb()
                        client.close()
                        if admin.get(f"esf-test:db-lease:{db}") == token.encode():
                            admin.delete(f"esf-test:db-lease:{db}")
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no free Redis database (1-15) within {timeout_s} s")
            time.sleep(0.5)
    finally:
        admin.close()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``); SIGKILL after a while."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    # Pool processes left behind by a killed parent.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)


@contextlib.contextmanager
def pg_database(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """The URL of a new PostgreSQL database of the benchmark's own on ``admin_url``'s server, dropped afterwards."""
    import psycopg

    name = f"esf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def esf_worker_env(db_url: str, redis_url: str, data_dir: Path | str) -> dict[str, str]:
    """``ESF_*`` settings of a benchmark's ESF workers (and ``BENCH_REDIS_URL`` for :func:`redis_client`)."""
    return {
        "ESF_BROKER_URL": redis_url, "ESF_DATABASE_URL": db_url, "ESF_DATA_DIR": str(data_dir),
        "ESF_JOBS_REDIS_DURABILITY_CHECK": "off", "ESF_TELEMETRY_ENABLED": "false",
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false", "BENCH_REDIS_URL": redis_url,
    }


def start_esf_worker(app: str, env: dict[str, str], log: Path, *, concurrency: int,
                     subscriptions: int) -> subprocess.Popen[bytes]:
    """``esf worker`` of ``app`` (``bench._x:make``) with ``env`` over the ``ESF_``-free environment, in a
    session of its own (stop it with :func:`stop_process`); returns once the worker's dispatcher has created
    the rows of ``subscriptions`` subscriptions.

    Raises:
        RuntimeError: the worker exited, or was not ready within 120 s (with the end of its log).
    """
    import psycopg

    full = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    full.update(env)
    # The app is imported from the repository's root (bench/ itself on the path would shadow the
    # standard library's secrets module with bench/secrets.py).
    full["PYTHONPATH"] = str(ROOT)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "esf.cli", "--app", app, "worker",
                                 f"--concurrency={concurrency}", "--loglevel=WARNING"], cwd=ROOT, env=full,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        with psycopg.connect(env["ESF_DATABASE_URL"]) as conn:
            try:
                n = conn.execute("SELECT count(*) FROM esf_subscriptions").fetchone()[0]  # type: ignore[index]
            except psycopg.errors.UndefinedTable:
                n = 0
        if n >= subscriptions:
            return proc
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")


_client: Any = None
_client_pid: int | None = None


def redis_client() -> Any:
    """One Redis client of ``BENCH_REDIS_URL`` per process (pool processes are forked)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client
