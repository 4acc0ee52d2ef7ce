"""A cache process driven by the tests: JSON commands on stdin, one JSON answer per line on stdout.

    python -m tests.cache.node REDIS_URL PREFIX '{"coherence_s": 30}'

Commands: {"op": "get"|"put"|"delete"|"bump"|"fetch"|"stats", ...}. ``fetch`` runs a loader that
counts its calls in Redis (INCR <prefix>test:loads), marks ``<prefix>test:loading`` and sleeps
``sleep`` seconds; ``threads`` runs that many fetches at once, released together at ``start_at``
(wall clock).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import redis

from esf.cache import create_cache
from esf.settings import CacheSettings, Settings, TelemetrySettings


def main() -> None:
    url, prefix, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    settings = Settings(data_dir="/tmp", redis_url=url, cache=CacheSettings(redis_prefix=prefix, **options),
                        telemetry=TelemetrySettings(enabled=False))
    cache = create_cache(settings)
    counter = redis.Redis.from_url(url)

    def loader(value: Any, sleep: float) -> Any:
        def load() -> Any:
            counter.incr(f"{prefix}test:loads")
            counter.set(f"{prefix}test:loading", "1")
            time.sleep(sleep)
            return value
        return load

    cache.core.ensure_started()
    cache.core.subscribed.wait(10)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        ns = cache.namespace(cmd.get("namespace", "default"))
        op = cmd["op"]
        out: Any
        if op == "get":
            out = ns.get(cmd["key"])
        elif op == "put":
            out = ns.put(cmd["key"], cmd["value"], ttl=cmd.get("ttl"))
        elif op == "delete":
            out = ns.delete(cmd["key"])
        elif op == "bump":
            out = ns.bump()
        elif op == "stats":
            out = cache.stats().to_dict()
        elif op == "fetch":
            out = fetch_many(ns, cmd, loader(cmd["value"], cmd.get("sleep", 0.0)))
        else:
            out = f"unknown op {op}"
        print(json.dumps({"result": out}), flush=True)
    cache.close()


def fetch_many(ns: Any, cmd: dict[str, Any], load: Any) -> list[Any]:
    """``cmd["threads"]`` fetches of one key at once, released together at ``cmd["start_at"]``."""
    n = cmd.get("threads", 1)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        delay = cmd.get("start_at", 0) - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            results[i] = ns.fetch(cmd["key"], load, ttl=cmd.get("ttl"))
        except Exception as exc:
            results[i] = f"error: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


if __name__ == "__main__":
    main()
