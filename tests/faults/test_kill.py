"""Workers SIGKILLed at random (seeded) moments, again and again, while jobs and subscription deliveries run."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from esf import Event

from .conftest import Cluster
from .ledger import settle

pytestmark = pytest.mark.slow

SEED = 20261203
JOBS = 240
EVENTS = 200
KILLS = 4


def test_workers_sigkilled_at_random_moments_lose_no_job_and_no_subscription_delivery(
        make_cluster: Callable[..., Cluster], redis_url: str, pg_url: str) -> None:
    rng = random.Random(SEED)
    # Given two workers on Redis running jobs and a subscription's deliveries, each recording its effect
    cluster = make_cluster(redis_url, ESF_DATABASE_URL=pg_url, ESF_TEST_FAULTS_SUBS="1")
    fnd = cluster.foundation()
    jobs, deliveries = cluster.ledger("kill-workers-jobs"), cluster.ledger("kill-workers-subscription")
    workers = [cluster.worker(), cluster.worker()]
    effect = fnd.jobs.get("f.effect")
    # When jobs and events are sent in waves while a random worker is SIGKILLed at a random moment of each wave
    killed = 0
    for wave in range(KILLS):
        keys = [f"j{wave}-{i}" for i in range(JOBS // KILLS)]
        jobs.sent(*keys)
        for k in keys:
            effect.enqueue("kill-workers-jobs", k, 0.05)
        ticks = [f"e{wave}-{i}" for i in range(EVENTS // KILLS)]
        deliveries.sent(*ticks)
        fnd.events.append([Event("fault.tick", {"scenario": "kill-workers-subscription", "key": t, "sleep": 0.02},
                                 stream_id=f"s-{i % 5}") for i, t in enumerate(ticks)])
        time.sleep(rng.uniform(0.5, 2.5))
        victim = workers.pop(rng.randrange(len(workers)))
        if rng.random() < 0.5:
            children = victim.children()
            if children:
                # a pool process alone: Celery re-queues its job (reject_on_worker_lost)
                os.kill(rng.choice(children), signal.SIGKILL)
                workers.append(victim)
                killed += 1
                continue
        victim.kill()
        killed += 1
        workers.append(cluster.worker(wait=False))
    jobs.fault_ended()
    deliveries.fault_ended()
    # Then every job and every matching event takes effect, at least once
    settle(jobs, deliveries, timeout=150)
    jobs.report(allow_duplicates=True, kills=killed, seed=SEED)
    deliveries.report(allow_duplicates=True, kills=killed, seed=SEED)
