"""The applications bench/jobs.py runs: the same no-op job for ESF, bare Celery and Dramatiq.

Every contender's job body is :func:`record`: one ``INCR`` of a Redis counter, plus
a timestamp when it is the first or the N-th completion. Drain throughput is
``(N - 1) / (last - first)``, measured inside the workers, so worker start-up and the
poll interval of the benchmark do not count.

Worker processes import this module (``PYTHONPATH=bench``) and read ``BENCH_*``
variables: ``BENCH_BROKER_URL``, ``BENCH_REDIS_URL`` (counter and results),
``BENCH_QUEUE``, ``BENCH_N`` and, for bare Celery, ``BENCH_MODE`` (``same`` | ``fast``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import redis_client

COUNTER_KEY = "bench:done"
FIRST_KEY = "bench:first"
LAST_KEY = "bench:last"
#: ESF's job and bare Celery's task have different names, so that no log or result can be mistaken.
ESF_JOB = "bench.esf_noop"
BARE_TASK = "bench.noop"


def record() -> None:
    """The job body of every contender."""
    client = redis_client()
    done = client.incr(COUNTER_KEY)
    if done == 1:
        client.set(FIRST_KEY, repr(time.time()))
    if done == int(os.environ.get("BENCH_N", "0")):
        client.set(LAST_KEY, repr(time.time()))


# -- ESF ----------------------------------------------------------------------


def make_esf(settings: Any = None) -> Any:
    """ESF with its defaults; one job, ``bench.esf_noop``, on the configured default queue."""
    import esf
    from esf.foundation import Foundation

    fnd = Foundation(settings or esf.Settings.from_env())

    @fnd.job(name=ESF_JOB)
    def noop(i: int) -> None:
        record()

    return fnd


# -- bare Celery ----------------------------------------------------------------


def make_bare(broker_url: str, result_url: str, queue: str, mode: str) -> Any:
    """A bare Celery app with one task, ``bench.noop``.

    ``mode="same"``: ESF's reliability settings (late ack, requeue on worker loss,
    prefetch 1, JSON, a quorum queue with publisher confirms on RabbitMQ).
    ``mode="fast"``: Celery's defaults for speed (ack on receipt, prefetch 64,
    a classic queue without confirms on RabbitMQ).
    ``mode="observed"``: ``same`` plus the monitoring ESF turns on (task events sent by the
    client and the worker, the STARTED state stored, extended results): a diagnosis of
    where ESF's cost comes from (``bench/jobs.py --diagnose``).
    """
    from celery import Celery
    from kombu import Exchange, Queue

    if mode not in ("same", "fast", "observed"):
        raise ValueError(f"mode must be 'same', 'fast' or 'observed', got {mode!r}")
    amqp = broker_url.startswith("amqp")
    same = mode != "fast"
    queue_arguments = {"x-queue-type": "quorum"} if amqp and same else None
    app = Celery(f"bench-bare-{mode}", set_as_current=False)
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": result_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": same,
        "task_reject_on_worker_lost": same,
        "worker_prefetch_multiplier": 1 if same else 64,
        "task_default_queue": queue,
        "task_queues": [Queue(queue, Exchange(queue, type="direct", durable=True), routing_key=queue,
                              durable=True, queue_arguments=queue_arguments)],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if amqp:
        conf["broker_transport_options"] = {"confirm_publish": same}
        if same:
            conf["worker_detect_quorum_queues"] = True
    else:
        # ESF's default visibility timeout on Redis.
        conf["broker_transport_options"] = {"visibility_timeout": 60}
    if mode == "observed":
        conf.update({"task_track_started": True, "task_send_sent_event": True, "worker_send_task_events": True,
                     "result_extended": True})
    app.conf.update(conf)

    @app.task(name=BARE_TASK, shared=False)
    def noop(i: int) -> None:
        record()

    return app


def __getattr__(name: str) -> Any:
    # `celery -A _jobs_apps:bare worker` and `dramatiq _jobs_apps:dramatiq_broker`: built from BENCH_*
    # in the worker process, on first access.
    if name == "bare":
        value = make_bare(os.environ["BENCH_BROKER_URL"], os.environ["BENCH_REDIS_URL"], os.environ["BENCH_QUEUE"],
                          os.environ["BENCH_MODE"])
    elif name == "dramatiq_broker":
        value = make_dramatiq(os.environ["BENCH_REDIS_URL"], os.environ["BENCH_QUEUE"])[0]
    else:
        raise AttributeError(name)
    globals()[name] = value
    return value


# -- Dramatiq -----------------------------------------------------------------


def make_dramatiq(redis_url: str, queue: str) -> tuple[Any, Any]:
    """A Dramatiq Redis broker (default middleware) and its ``bench_noop`` actor on ``queue``."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url)
    dramatiq.set_broker(broker)

    def bench_noop(i: int) -> None:
        record()

    actor = dramatiq.Actor(bench_noop, broker=broker, actor_name="bench_noop", queue_name=queue, priority=0,
                           options={})
    return broker, actor
