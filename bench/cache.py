"""Cache benchmark: ESF's cache and its baselines side by side, in one run.

    python bench/cache.py [--quick] [--json] [--redis-url redis://127.0.0.1:6379/15]

1. In-process hit: ``fnd.cache.get`` served by the in-process tier against a bare ``cachetools.TTLCache``
   lookup of the same key (target: within 2x).
2. Shared-tier hit: ``get`` served by the Redis tier (in-process tier off) against a raw redis-py ``GET``
   of the same value (target: within 1.3x).
3. Stampede: 50 concurrent misses of one key across 4 processes; counts the loader's calls (target: 1).

Runs alternate ESF and baseline; ratios are medians of per-run ratios. Uses a leased Redis DB (1-15)
unless ``--redis-url`` names one. The last line printed is the headline ratio: in-process hit / TTLCache.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cachetools
import redis
from _common import Report, lease_redis_db, parse_args
from redis.backoff import NoBackoff
from redis.retry import Retry

from esf.cache import create_cache
from esf.settings import CacheSettings, Settings, TelemetrySettings

VALUE = {"sku": "sku-1", "price": {"eur": 12.5, "usd": 13.1}, "tags": ["a", "b"]}
PROCESSES = 4
MISSES = 50


def _settings(url: str, prefix: str, **cache: Any) -> Settings:
    return Settings(data_dir="/tmp", redis_url=url, cache=CacheSettings(redis_prefix=prefix, **cache),
                    telemetry=TelemetrySettings(enabled=False))


def bench_hits(report: Report, url: str, n: int, runs: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    near = create_cache(_settings(url, prefix, coherence_s=60.0))
    shared_only = create_cache(_settings(url, prefix, local_max_entries=0))
    raw = redis.Redis.from_url(url)
    # The same GET through a client set up as the cache's (socket timeouts, one retry): what the timeouts cost.
    timed = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30,
                                 retry=Retry(NoBackoff(), 1))
    try:
        near.put("k", VALUE, ttl=600)
        assert near.get("k") == VALUE and shared_only.get("k") == VALUE
        bare = cachetools.TTLCache(maxsize=10_000, ttl=600)
        bare["k"] = VALUE
        data_key = f"{prefix}d:default:0:k"
        assert raw.get(data_key) is not None
        esf_local, bare_local, esf_shared, raw_get, timed_get = [], [], [], [], []
        shared_n = max(200, n // 50)
        contenders = [
            (esf_local, lambda: timeit.timeit("get('k')", globals={"get": near.get}, number=n) / n * 1e9),
            (bare_local, lambda: timeit.timeit("c['k']", globals={"c": bare}, number=n) / n * 1e9),
            (esf_shared, lambda: timeit.timeit("get('k')", globals={"get": shared_only.get}, number=shared_n)
             / shared_n * 1e6),
            (raw_get, lambda: timeit.timeit("get(key)", globals={"get": raw.get, "key": data_key},
                                            number=shared_n) / shared_n * 1e6),
            (timed_get, lambda: timeit.timeit("get(key)", globals={"get": timed.get, "key": data_key},
                                              number=shared_n) / shared_n * 1e6),
        ]
        for run in range(runs):
            # Each pair side by side, the order of the pair's members swapped from run to run.
            for pair in (contenders[0:2], contenders[2:5]):
                for samples, measure in (pair if run % 2 == 0 else pair[::-1]):
                    samples.append(measure())
        report.add("local_hit.esf_ns", esf_local, "ns")
        report.add("local_hit.ttlcache_ns", bare_local, "ns")
        report.add("shared_hit.esf_us", esf_shared, "us")
        report.add("shared_hit.redis_get_us", raw_get, "us")
        report.add("shared_hit.redis_get_timeouts_us", timed_get, "us")
        report.paired_ratio("local_hit.esf_vs_ttlcache", esf_local, bare_local)
        report.paired_ratio("shared_hit.esf_vs_redis_get", esf_shared, raw_get)
        report.paired_ratio("shared_hit.esf_vs_redis_get_timeouts", esf_shared, timed_get)
    finally:
        near.close()
        shared_only.close()
        raw.close()
        timed.close()


def _stampede_process(url: str, prefix: str, threads: int, start_at: float, out: Any) -> None:
    cache = create_cache(_settings(url, prefix))
    counter = redis.Redis.from_url(url)
    cache.core.ensure_started()
    cache.core.subscribed.wait(10)

    def load() -> Any:
        counter.incr(f"{prefix}loads")
        time.sleep(0.2)
        return VALUE

    results: list[Any] = []

    def run() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        results.append(cache.fetch("report", load, ttl=60))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((sum(r == VALUE for r in results), len(results), cache.stats().namespaces["default"].stampede_waits))
    cache.close()


def bench_stampede(report: Report, url: str, runs: int) -> None:
    loads, served, waits, elapsed = [], [], [], []
    ctx = multiprocessing.get_context("spawn")
    raw = redis.Redis.from_url(url)
    for _ in range(runs):
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        out = ctx.Queue()
        start_at = time.time() + 3.0
        shares = [MISSES // PROCESSES + (1 if i < MISSES % PROCESSES else 0) for i in range(PROCESSES)]
        procs = [ctx.Process(target=_stampede_process, args=(url, prefix, k, start_at, out)) for k in shares]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        loads.append(float(int(raw.get(f"{prefix}loads") or 0)))
        served.append(float(sum(r[0] for r in results)))
        waits.append(float(sum(r[2] for r in results)))
        elapsed.append(time.time() - start_at)
    raw.close()
    report.add("stampede.loader_calls", loads, "calls")
    report.add("stampede.fetches_served", served, "calls")
    report.add("stampede.waits", waits, "calls")
    report.add("stampede.seconds_after_start", elapsed, "s")


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], full_n=200_000, quick_n=20_000,
                      extra=[(["--redis-url"], {"default": None, "help": "Redis to use (default: a leased DB)"})])
    report = Report("cache", args, processes=PROCESSES, misses=MISSES)
    if args.redis_url:
        return _run(report, args, args.redis_url)
    with lease_redis_db() as db:
        return _run(report, args, f"redis://127.0.0.1:6379/{db}")


def _run(report: Report, args: Any, url: str) -> int:
    report.log("hits: in-process and shared tier against their baselines")
    bench_hits(report, url, args.n, max(args.runs, 3))
    report.log("stampede: 50 concurrent misses across 4 processes")
    bench_stampede(report, url, args.runs)
    report.finish(headline="local_hit_esf_vs_ttlcache", value=report.doc["ratios"]["local_hit.esf_vs_ttlcache"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
