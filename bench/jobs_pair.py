"""Two job contenders draining (or enqueueing) at the same time: a ratio the machine's drift cancels out.

    .venv/bin/python bench/jobs_pair.py esf bare-same                 # 6,000 jobs each, 3 rounds
    .venv/bin/python bench/jobs_pair.py esf esf-plain --quick         # 1,500 jobs each, one round
    .venv/bin/python bench/jobs_pair.py esf bare-same --broker amqp --json
    .venv/bin/python bench/jobs_pair.py esf bare-same --phase enqueue --broker amqp

bench/jobs.py runs its contenders one after the other, so a machine whose speed
drifts between runs moves their ratio. Here two workers (each one worker with 2
pool processes, started as bench/jobs.py starts them) drain at the same time:
each contender's queue is first filled with N jobs (no worker running), then both
workers start together, and each counts its completions in a Redis database of
its own. The rates are taken over the window in which both drain (from the moment
both have done 5 % until the first reaches 90 %), so both see the same machine.
The two workers share the CPUs, so the rates are about half of bench/jobs.py's;
the ratio is what one contender costs against the other when the CPUs are the
limit. On Linux, each worker's CPU time per job (its main process, its pool
processes) is reported too. Rounds alternate which worker starts first.

With ``--phase enqueue``, two producer processes (each one enqueue loop, as
bench/jobs.py's) warm up, then enqueue N jobs each at the same time; each adds
its count to its Redis database every 50 jobs, and the rates and the CPU time
per job of each producer are taken over the same kind of window. The queues
are emptied afterwards.

Contenders: esf, esf-plain, esf-notel, esf-pg, bare-same, bare-fast-prefork,
bare-fast-threads, dramatiq (Redis only), as described in bench/jobs.py, and esf-nohist
(ESF with its job history off, telemetry on).
The last line printed is the median of the per-round ratios, first / second.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REDIS_HOST, REDIS_PORT, Report, lease_redis_db, parse_args, stop_process
from _jobs_apps import COUNTER_KEY, FIRST_KEY, LAST_KEY
from jobs import (
    BATCHED,
    REDIS_CONTENDERS,
    VARIANTS,
    WORKER_READY_TIMEOUT_S,
    Bench,
    Contender,
    ensure_pg_database,
    warm_queue,
)

CONTENDERS = {c.name: c for c in (*REDIS_CONTENDERS, *VARIANTS, Contender("esf-nohist", "esf", "nohist"))
              if c is not BATCHED}
#: The window: from both workers at this share of N done, to the first at the end share.
WINDOW = (0.05, 0.90)
#: --phase enqueue: each producer's count of jobs sent, its "warmed up" flag, and the start signal.
SENT_KEY, READY_KEY, GO_KEY = "bench:pair:sent", "bench:pair:ready", "bench:pair:go"
#: A producer adds its count to SENT_KEY every this many jobs.
SENT_STEP = 50


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of ``pid`` and of its child processes, from /proc; NaN elsewhere."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        with open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        kids: list[int] = []
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        return own(pid), sum(own(k) for k in kids)
    except (OSError, ValueError):
        return float("nan"), float("nan")


def produce(broker: str, name: str, redis_url: str, queue: str, n: int) -> None:
    """A producer of ``--phase enqueue`` (run in a process of its own): warm up, wait for the start, send N."""
    bench = Bench(Report("jobs_pair", argparse.Namespace(json=False, quick=False, n=n, runs=1)), redis_url, n)
    send, close, _, warm = bench.producer(broker, queue, CONTENDERS[name])
    try:
        warm()
        bench.redis.set(READY_KEY, 1)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not bench.redis.exists(GO_KEY):
            if time.monotonic() > deadline:
                raise SystemExit("no start signal")
            time.sleep(0.002)
        for i in range(n):
            send(i)
            if i % SENT_STEP == SENT_STEP - 1:
                bench.redis.incrby(SENT_KEY, SENT_STEP)
    finally:
        close()


Window = tuple[list[int], list[tuple[float, float]], float]


def watch(benches: list[Bench], procs: list[Any], pair: list[Contender], key: str,
          deadline: float) -> tuple[Window, Window]:
    """(counts, CPU times, clock) when both processes have done WINDOW[0] of N, and when the first has done WINDOW[1].

    The counts are read from ``key`` in each contender's Redis database.
    """
    n = benches[0].n

    def done() -> list[int]:
        return [int(b.redis.get(key) or 0) for b in benches]

    while min(done()) < n * WINDOW[0]:
        for p, c in zip(procs, pair, strict=True):
            if p.poll() is not None and min(done()) < n * WINDOW[0]:
                raise RuntimeError(f"the {c.name} process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done()} of {n} jobs in time")
        time.sleep(0.01)
    start = done(), [cpu_seconds(p.pid) for p in procs], time.perf_counter()
    while max(done()) < n * WINDOW[1]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done()} of {n} jobs in time")
        time.sleep(0.01)
    return start, (done(), [cpu_seconds(p.pid) for p in procs], time.perf_counter())


def enqueue_round(benches: list[Bench], broker: str, pair: list[Contender], round_no: int) -> list[dict[str, float]]:
    """Both producers enqueue N jobs at the same time; their rates and CPU per job over the window."""
    queues = [b.queue_name(broker, c, round_no) for b, c in zip(benches, pair, strict=True)]
    order = [0, 1] if round_no % 2 else [1, 0]
    procs: list[Any] = [None, None]
    logs = [b.logs / f"{broker}-{c.name}-enqueue-{round_no}.log" for b, c in zip(benches, pair, strict=True)]
    n = benches[0].n
    for b in benches:
        b.redis.delete(SENT_KEY, READY_KEY, GO_KEY)
    try:
        for i in order:
            log = logs[i]
            env = benches[i].worker_env(broker, queues[i], pair[i], n)
            argv = [sys.executable, str(Path(__file__).resolve()), "--produce", broker, pair[i].name,
                    benches[i].redis_url, queues[i], str(n)]
            with open(log, "ab") as fh:
                procs[i] = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not all(b.redis.exists(READY_KEY) for b in benches):
            for p, c in zip(procs, pair, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"the {c.name} producer exited before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError("the producers were not ready in time")
            time.sleep(0.01)
        for i in order:
            benches[i].redis.set(GO_KEY, 1)
        (start_done, start_cpu, started), (end_done, end_cpu, ended) = watch(
            benches, procs, pair, SENT_KEY, time.monotonic() + WORKER_READY_TIMEOUT_S + n / 10)
        for p, c, log in zip(procs, pair, logs, strict=True):
            if p.wait(timeout=WORKER_READY_TIMEOUT_S + n / 10) != 0:
                raise RuntimeError(f"the {c.name} producer failed (its log: {log})")
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                stop_process(p)
        for b, q in zip(benches, queues, strict=True):
            b.purge(broker, q)
            b.purge(broker, warm_queue(q))
    out = []
    for i in range(2):
        jobs = max(1, end_done[i] - start_done[i])
        out.append({"enqueue": jobs / (ended - started),
                    "cpu_us": (end_cpu[i][0] - start_cpu[i][0]) / jobs * 1e6})
    return out


def drain_round(benches: list[Bench], broker: str, pair: list[Contender], round_no: int) -> list[dict[str, float]]:
    """Both workers drain their filled queues at the same time; rates and CPU per job over the window."""
    queues = [b.fill(broker, c, round_no)[0] for b, c in zip(benches, pair, strict=True)]
    order = [0, 1] if round_no % 2 else [1, 0]
    procs: list[Any] = [None, None]
    for i in order:
        log = benches[i].logs / f"{broker}-{pair[i].name}-pair-{round_no}.log"
        procs[i] = benches[i].start_worker(broker, queues[i], pair[i], benches[i].n, log)
    n = benches[0].n
    try:
        (start_done, start_cpu, started), (end_done, end_cpu, ended) = watch(
            benches, procs, pair, COUNTER_KEY, time.monotonic() + WORKER_READY_TIMEOUT_S + n / 10)
    finally:
        for p in procs:
            if p is not None:
                stop_process(p)
    out = []
    for i in range(2):
        jobs = max(1, end_done[i] - start_done[i])
        out.append({
            "drain": jobs / (ended - started),
            "main_us": (end_cpu[i][0] - start_cpu[i][0]) / jobs * 1e6,
            "pool_us": (end_cpu[i][1] - start_cpu[i][1]) / jobs * 1e6,
        })
    for b in benches:
        b.redis.delete(COUNTER_KEY, FIRST_KEY, LAST_KEY)
    return out


def main() -> int:
    if sys.argv[1:2] == ["--produce"]:  # a producer process of --phase enqueue
        broker, name, redis_url, queue, n = sys.argv[2:7]
        produce(broker, name, redis_url, queue, int(n))
        return 0
    args = parse_args(__doc__.split("\n", 1)[0], full_n=6_000, quick_n=1_500,
                      extra=[(["first"], {"choices": sorted(CONTENDERS), "help": "the contender measured"}),
                             (["second"], {"choices": sorted(CONTENDERS), "help": "the contender it is set against"}),
                             (["--broker"], {"default": "redis", "choices": ["redis", "amqp"]}),
                             (["--phase"], {"default": "drain", "choices": ["drain", "enqueue"],
                                            "help": "what the two contenders do at the same time"})])
    pair = [CONTENDERS[args.first], CONTENDERS[args.second]]
    if args.broker == "amqp" and any(c.kind == "dramatiq" for c in pair):
        raise SystemExit("dramatiq runs on Redis only")
    if any(c.mode == "pg" for c in pair):
        ensure_pg_database()
    phase = args.phase
    report = Report("jobs_pair", args, broker=args.broker, first=args.first, second=args.second, phase=phase,
                    worker="2 workers at once, 1 worker each with 2 processes" if phase == "drain"
                    else "2 producer processes at once, one enqueue loop each")
    samples: list[list[dict[str, float]]] = [[], []]
    with contextlib.ExitStack() as stack:
        benches = []
        for _ in pair:
            db = stack.enter_context(lease_redis_db())
            bench = Bench(report, f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", args.n)
            stack.callback(bench.cleanup)
            benches.append(bench)
        report.log(f"logs in {benches[0].logs} and {benches[1].logs}")
        for round_no in range(1, args.runs + 1):
            if phase == "drain":
                result = drain_round(benches, args.broker, pair, round_no)
                text = "{drain:7.1f}/s (CPU per job: main {main_us:5.0f} µs, pool {pool_us:5.0f} µs)"
            else:
                result = enqueue_round(benches, args.broker, pair, round_no)
                text = "{enqueue:7.1f}/s (CPU per job {cpu_us:5.0f} µs)"
            for i in range(2):
                samples[i].append(result[i])
            report.log(f"round {round_no}: " + "  ".join(
                f"{c.name} " + text.format(**r) for c, r in zip(pair, result, strict=True)))
    units = {"drain": "jobs/s", "enqueue": "jobs/s", "main_us": "µs/job", "pool_us": "µs/job", "cpu_us": "µs/job"}
    for c, runs in zip(pair, samples, strict=True):
        for what in runs[0]:
            report.add(f"{args.broker}.{c.name}.{what}", [r[what] for r in runs], units[what])
    key = f"{args.broker}.{pair[0].name}_vs_{pair[1].name}.{phase}"
    value = report.paired_ratio(key, [r[phase] for r in samples[0]], [r[phase] for r in samples[1]])
    report.finish(f"{pair[0].name}/{pair[1].name} {phase} side by side on {args.broker}", value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
