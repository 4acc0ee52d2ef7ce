"""Workers SIGKILLed at random (seeded) moments, again and again, while jobs and subscription deliveries run.

Each kill hands a job it held back to the queue at most once, so a job starts at most ``KILLS + 1`` times:
the scenario's delivery limit is that (ESF's default, 5), and a job is dead-lettered only when something
other than the kills redelivered it. Whatever was dead-lettered is replayed from the DLQ once the rest has
settled, and must then be done: the summary line shows how many were dead-lettered and replayed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest
import redis

from esf import Event
from tests.jobs.harness import wait_for

from .conftest import Cluster
from .ledger import settle

pytestmark = pytest.mark.slow

SEED = 20261203
JOBS = 240
EVENTS = 200
KILLS = 4
#: Above what the kills can consume: each hands a job back at most once.
MAX_DELIVERIES = KILLS + 1


def test_workers_sigkilled_at_random_moments_lose_no_job_and_no_subscription_delivery(
        make_cluster: Callable[..., Cluster], redis_url: str, pg_url: str) -> None:
    rng = random.Random(SEED)
    # Given two workers on Redis running jobs and a subscription's deliveries, each recording its effect
    cluster = make_cluster(redis_url, ESF_DATABASE_URL=pg_url, ESF_TEST_FAULTS_SUBS="1",
                           ESF_JOBS_MAX_DELIVERIES=str(MAX_DELIVERIES))
    fnd = cluster.foundation()
    jobs, deliveries = cluster.ledger("kill-workers-jobs", fnd), cluster.ledger("kill-workers-subscription", fnd)
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
    # Then every job and every matching event takes effect at least once, or is held by the DLQ
    settle(jobs, deliveries, timeout=150)
    # And what was dead-lettered, replayed from the DLQ, takes effect too
    if jobs.replay_dead_letters() + deliveries.replay_dead_letters():
        settle(jobs, deliveries, timeout=60)
    jobs.report(allow_duplicates=True, all_done=True, kills=killed, max_deliveries=MAX_DELIVERIES, seed=SEED)
    deliveries.report(allow_duplicates=True, all_done=True, kills=killed, max_deliveries=MAX_DELIVERIES)


def blocked_in_brpop(broker: redis.Redis[bytes], db: int) -> bool:
    """A client of database ``db`` waits in BRPOP (the worker's consumer, idle)."""
    return any(c.get("db") == str(db) and c.get("cmd") == "brpop" and "b" in c.get("flags", "")
               for c in broker.client_list())


def test_a_worker_killed_after_redis_woke_it_for_a_job_and_before_it_took_it_loses_no_job(
        make_cluster: Callable[..., Cluster], redis_url: str) -> None:
    # Given an idle worker of one process, its consumer waiting in BRPOP
    cluster = make_cluster(redis_url)
    fnd = cluster.foundation()
    ledger = cluster.ledger("kill-after-pop", fnd)
    worker = cluster.worker(concurrency=1)
    broker = redis.Redis.from_url(redis_url)
    db = int(redis_url.rsplit("/", 1)[1])
    queue = fnd.settings.jobs.default_queue
    # When its main process is stopped (it has not read its socket yet) while the BRPOP waits (its timeout
    # is a second: a stop that comes after it is undone and tried again)
    for _ in range(20):
        wait_for(lambda: blocked_in_brpop(broker, db), timeout=30, message="the consumer waiting in BRPOP")
        os.kill(worker.proc.pid, signal.SIGSTOP)
        if blocked_in_brpop(broker, db):
            break
        os.kill(worker.proc.pid, signal.SIGCONT)
    else:
        pytest.fail("the worker could not be stopped while it waited in BRPOP")
    # and a job is sent, Redis answers the BRPOP, and the worker is SIGKILLed before it reads the answer
    ledger.sent("k0")
    fnd.jobs.get("f.effect").enqueue("kill-after-pop", "k0")
    wait_for(lambda: not blocked_in_brpop(broker, db), timeout=30, message="Redis answering the stopped consumer")
    # Then what Redis handed over was a wake-up token: the job itself is still on its list (kombu's BRPOP
    # consumer is handed the job, and loses it with the worker)
    assert broker.llen(queue) == 1
    worker.kill()
    # Then a new worker runs the job, once the visibility timeout gives back what the dead worker held
    cluster.worker(concurrency=1)
    jobs = fnd.settings.jobs
    settle(ledger, timeout=jobs.visibility_timeout_s + jobs.restore_interval_s + 10)
    ledger.report(allow_duplicates=True)
