"""The application bench/subscriptions.py runs in its worker subprocesses (settings from ESF_* variables).

- ``lat``: a live subscription on ``bench.ping`` (partitioned by stream; every ping has its own); its handler
  pushes ``now - data.t`` (seconds from the append's start to the handler) to ``bench:lat``.
- ``bench.ping_job``: the baseline, a plain job whose handler pushes ``now - t`` (enqueue to handler).
- ``thr``: a subscription on ``bench.work`` partitioned by stream; its handler spends
  ``data.work_ms`` of CPU and increments ``bench:done``, setting ``bench:first``/``bench:last``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

import esf
from esf import Q
from esf.foundation import Foundation

_client: Any = None
_pid: int | None = None


def client() -> Any:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _pid = os.getpid()
    return _client


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def make() -> Foundation:
    fnd = Foundation(esf.Settings.from_env())

    @fnd.subscription("lat", filter=Q.type("bench.ping"), partition_by="stream_id", max_in_flight=32, retries=0)
    def lat(event: Any) -> None:
        client().rpush("bench:lat", time.time() - float(event.data["t"]))

    @fnd.job(name="bench.ping_job", queue=fnd.settings.jobs.service_queue("events"), retries=0)
    def ping_job(t: float) -> None:
        client().rpush("bench:job_lat", time.time() - t)

    @fnd.subscription("thr", filter=Q.type("bench.work"), partition_by="stream_id", batch_size=20,
                      max_in_flight=32, retries=0)
    def thr(event: Any) -> None:
        _spin(float(event.data.get("work_ms", 0)))
        r = client()
        n = r.incr("bench:done")
        now = time.time()
        if n == 1:
            r.set("bench:first", now)
        r.set("bench:last", now)

    return fnd
