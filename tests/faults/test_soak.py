"""A sustained load of jobs and events at a fixed rate; the resident memory of every worker process sampled.

``ESF_SOAK_SECONDS`` sets the duration (60 s by default, so CI stays within budget; 300 s for the
figures in docs/reliability.md). The bound: after a warm-up of a quarter of the run (at least 15 s),
no worker process (main or pool) grows by more than ``GROWTH_BOUND_MIB`` between the median of its
first five samples and the median of its last five.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from esf import Event

from .conftest import Cluster
from .ledger import settle

pytestmark = pytest.mark.slow

#: Read at import: the tests' autouse fixture clears ``ESF_*`` variables before each test runs.
SOAK_SECONDS = float(os.environ.get("ESF_SOAK_SECONDS", "60"))
JOBS_PER_S = 20
EVENTS_PER_S = 20
GROWTH_BOUND_MIB = 16.0


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_a_sustained_load_of_jobs_and_events_keeps_every_worker_process_within_its_memory_bound(
        make_cluster: Callable[..., Cluster], redis_url: str, pg_url: str) -> None:
    # Given one worker of two processes, running jobs and a subscription's deliveries
    cluster = make_cluster(redis_url, ESF_DATABASE_URL=pg_url, ESF_TEST_FAULTS_SUBS="1")
    fnd = cluster.foundation()
    jobs, deliveries = cluster.ledger("soak-jobs"), cluster.ledger("soak-subscription")
    worker = cluster.worker()
    effect = fnd.jobs.get("f.effect")
    samples: dict[int, list[tuple[float, float]]] = {}
    start = time.monotonic()
    warm_up = max(15.0, SOAK_SECONDS / 4)
    n = 0
    # When jobs and events arrive at a fixed rate for SOAK_SECONDS, memory sampled every second
    next_sample = start
    while (now := time.monotonic()) < start + SOAK_SECONDS:
        due = int((now - start) * JOBS_PER_S)
        while n < due:
            jobs.sent(f"j{n}")
            effect.enqueue("soak-jobs", f"j{n}")
            if n % (JOBS_PER_S // EVENTS_PER_S or 1) == 0:
                deliveries.sent(f"e{n}")
                fnd.events.append(Event("fault.tick", {"scenario": "soak-subscription", "key": f"e{n}"},
                                        stream_id=f"s-{n % 7}"))
            n += 1
        if now >= next_sample:
            for pid in [worker.proc.pid, *worker.children()]:
                value = rss_mib(pid)
                if value is not None:
                    samples.setdefault(pid, []).append((now - start, value))
            next_sample += 1.0
        time.sleep(0.01)
    # Then everything sent was done
    settle(jobs, deliveries, timeout=120)
    # And no process grew beyond the bound after the warm-up
    growth: dict[int, float] = {}
    for pid, series in samples.items():
        after = [v for t, v in series if t >= warm_up]
        if len(after) >= 10:
            growth[pid] = statistics.median(after[-5:]) - statistics.median(after[:5])
    assert growth, "no process was sampled long enough after the warm-up"
    worst = max(growth.values())
    peak = max(v for series in samples.values() for _, v in series)
    figures = {"seconds": int(SOAK_SECONDS), "processes": len(growth), "max_growth_mib": round(worst, 1),
               "peak_rss_mib": round(peak, 1), "bound_mib": GROWTH_BOUND_MIB, "jobs_per_s": JOBS_PER_S}
    jobs.report(allow_duplicates=True, **figures)
    deliveries.report(allow_duplicates=True, **figures)
    assert worst <= GROWTH_BOUND_MIB, f"a worker process grew by {worst:.1f} MiB after the warm-up: {growth}"
