"""The application bench/subscriptions.py runs in its worker subprocesses (settings from ESF_* variables).

- ``lat``: a live subscription on ``bench.ping`` (partitioned by stream; every ping has its own); its handler
  pushes ``now - data.t`` (seconds from the append's start to the handler) to ``bench:lat``.
- ``bench.ping_job``: the baseline, a plain job whose handler pushes ``now - t`` (enqueue to handler).
- ``thr``: a subscription on ``bench.work`` partitioned by stream; its handler spends
  ``data.work_ms`` of CPU and increments ``bench:done``, setting ``bench:first``/``bench:last``.
"""

from __future__ import annotations

import time
from typing import Any

import esf
from esf import Q
from esf.foundation import Foundation

if __package__:  # bench._subs_app in a worker (PYTHONPATH is the repository's root)
    from ._common import redis_client
else:  # _subs_app imported by its benchmark (bench/ on the path)
    from _common import redis_client


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def make() -> Foundation:
    fnd = Foundation(esf.Settings.from_env())

    @fnd.subscription("lat", filter=Q.type("bench.ping"), partition_by="stream_id", max_in_flight=32, retries=0)
    def lat(event: Any) -> None:
        redis_client().rpush("bench:lat", time.time() - float(event.data["t"]))

    @fnd.job(name="bench.ping_job", queue=fnd.settings.jobs.service_queue("events"), retries=0)
    def ping_job(t: float) -> None:
        redis_client().rpush("bench:job_lat", time.time() - t)

    @fnd.subscription("thr", filter=Q.type("bench.work"), partition_by="stream_id", batch_size=20,
                      max_in_flight=32, retries=0)
    def thr(event: Any) -> None:
        _spin(float(event.data.get("work_ms", 0)))
        r = redis_client()
        n = r.incr("bench:done")
        now = time.time()
        if n == 1:
            r.set("bench:first", now)
        r.set("bench:last", now)

    return fnd
