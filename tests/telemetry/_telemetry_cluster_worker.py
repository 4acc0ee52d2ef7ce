"""Processes of the cluster test: a "worker" that forks "prefork children", each emitting metrics."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import random
import signal
import sys
import time

from esf.settings import TelemetrySettings
from esf.telemetry import RedisSnapshotStore, SQLiteSnapshotStore, Telemetry

PER_CHILD = 2000
PER_WORKER = 100


def make_store(kind: str, target: str):
    if kind == "redis":
        return RedisSnapshotStore(target, proc_ttl_s=30)
    return SQLiteSnapshotStore(target, proc_ttl_s=30)


def samples_for(worker: int, child: int) -> list[float]:
    rng = random.Random(worker * 100 + child)
    return [rng.lognormvariate(-2, 1) for _ in range(PER_CHILD)]


def _child(tel: Telemetry, worker: int, child: int) -> None:
    # A hang can be diagnosed: the worker sends SIGUSR1 before killing a child that did not finish.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    # The objects resolved before the fork are used as they are: the fork reset zeroed them.
    c = tel.counter("test.jobs.done", {"queue": "q"})
    h = tel.histogram("test.jobs.seconds", {"queue": "q"})
    for v in samples_for(worker, child):
        c.inc()
        h.observe(v)
    tel.gauge("test.children").set(1)
    tel.close()  # what the worker_process_shutdown signal does


def worker_main(kind: str, target: str, worker: int, children: int) -> None:
    tel = Telemetry(TelemetrySettings(push_interval_s=0.05), store=make_store(kind, target), node=f"w{worker}")
    c = tel.counter("test.jobs.done", {"queue": "q"})
    tel.histogram("test.jobs.seconds", {"queue": "q"})
    for _ in range(PER_WORKER):
        c.inc()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_child, args=(tel, worker, i)) for i in range(children)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.is_alive():
            os.kill(p.pid, signal.SIGUSR1)
            time.sleep(2)
            p.kill()
            p.join()
        assert p.exitcode == 0, p.exitcode
    tel.close()
