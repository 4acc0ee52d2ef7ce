"""An ESF Redis channel takes a job and records it unacknowledged in one step (esf/jobs/_redis_take.py).

Real Redis, real kombu consumers; a consumer that dies is a process of its own, SIGKILLed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from esf.jobs._redis_clients import EsfConnection
from esf.jobs._redis_take import TAKE_SCRIPT, WAKE_TTL_MS
from tests.servers import PrivateRedis

SEP = "\x06\x16"


def wake(queue: str) -> str:
    return f"{queue}{SEP}wake"


def publish(conn: Connection, queue: str, *bodies: Any, priority: int | None = None) -> None:
    with Producer(conn) as producer:
        for body in bodies:
            producer.publish(body, routing_key=queue, declare=[Queue(queue)], serializer="json", priority=priority)


def drain(conn: Connection, queue: str, count: int, *, no_ack: bool = False, ack: bool = True,
          timeout: float = 30, declare: bool = True) -> list[Any]:
    """Consume ``count`` messages of ``queue`` on ``conn`` (a fresh consumer), in the order they come."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((body, message))
        if ack and not no_ack:
            message.ack()

    deadline = time.monotonic() + timeout
    with Consumer(conn, [Queue(queue)], callbacks=[on_message], accept=["json"], no_ack=no_ack, prefetch_count=count,
                  auto_declare=declare):
        while len(got) < count:
            assert time.monotonic() < deadline, f"{len(got)} of {count} messages in {timeout} s"
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    return got


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    yield client
    client.close()


TAKE_AND_DIE = """
import os, select, signal, sys
from kombu import Consumer, Queue
from esf.jobs._redis_clients import EsfConnection

conn = EsfConnection(sys.argv[1])
channel = conn.default_channel
consumer = Consumer(channel, [Queue(sys.argv[2])], callbacks=[lambda body, message: None], accept=["json"])
consumer.consume()
conn.transport.cycle._register_BRPOP(channel)  # sends the consumer's first poll: a take, the queue not empty
select.select([channel.client.connection._sock], [], [], 30)  # the server ran it: its reply is here, unread
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_consumer_killed_after_redis_ran_its_take_and_before_it_read_the_reply_loses_no_job(
        redis_url: str, broker: redis.Redis[bytes]) -> None:
    # Given a job on its queue, and a server that knows the take script
    with EsfConnection(redis_url) as conn:
        publish(conn, "esf-take-die", {"job": 1})
    broker.script_load(TAKE_SCRIPT)
    tag = broker.lrange("esf-take-die", 0, -1)[0]
    # When a consumer of its own process sends its take and is SIGKILLed once the reply is on its socket
    proc = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, redis_url, "esf-take-die"], timeout=60,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    # Then the job left its list and is recorded unacknowledged, under its delivery tag, as kombu records it
    # (kombu's BRPOP consumer leaves it nowhere)
    assert broker.llen("esf-take-die") == 0
    delivery_tag = json.loads(tag)["properties"]["delivery_tag"]
    recorded = broker.hget("unacked", delivery_tag)
    assert recorded is not None and broker.zscore("unacked_index", delivery_tag) is not None
    payload, exchange, routing_key = json.loads(recorded)
    assert payload == json.loads(tag) and (exchange, routing_key) == ("", "esf-take-die")
    # And the restore sweep gives it back to a live consumer once its visibility timeout has passed
    options = {"visibility_timeout": 1, "unacked_restore_throttle": 1}
    with EsfConnection(redis_url, transport_options=options) as conn:
        [(body, message)] = drain(conn, "esf-take-die", 1)
    assert body == {"job": 1} and message.delivery_info.get("redelivered") is True
    assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0


def test_a_delivered_job_is_recorded_once_and_its_acknowledgement_clears_it(
        redis_url: str, broker: redis.Redis[bytes]) -> None:
    with EsfConnection(redis_url) as conn:
        publish(conn, "esf-take-ack", {"n": 1}, {"n": 2})
        # A consumer that acknowledges: each job is in unacked while it is held
        [(body, message)] = drain(conn, "esf-take-ack", 1, ack=False)
        assert body == {"n": 1}
        assert broker.hexists("unacked", message.delivery_tag)
        assert broker.zscore("unacked_index", message.delivery_tag) is not None
        message.ack()
        assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0
        # basic_get records what it gets when it acknowledges, and nothing with no_ack
        channel = conn.default_channel
        got = channel.basic_get("esf-take-ack", no_ack=False)
        assert got is not None and broker.hexists("unacked", got.delivery_tag)
        channel.basic_ack(got.delivery_tag)
        publish(conn, "esf-take-ack", {"n": 3}, {"n": 4})
        assert channel.basic_get("esf-take-ack", no_ack=True) is not None
        # a no_ack consumer (Celery's pidbox replies) records nothing either
        assert [b for b, _ in drain(conn, "esf-take-ack", 1, no_ack=True)] == [{"n": 4}]
    assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0


def test_publishing_keeps_at_most_one_wake_up_token_and_it_expires(
        redis_url: str, broker: redis.Redis[bytes]) -> None:
    queue = Queue("esf-take-wake", Exchange("esf-take-wake"), routing_key="esf-take-wake")
    with EsfConnection(redis_url) as conn, Producer(conn) as producer:
        for n in range(50):
            producer.publish(n, exchange=queue.exchange, routing_key="esf-take-wake", declare=[queue],
                             serializer="json")
        assert broker.llen("esf-take-wake") == 50
        assert broker.llen(wake("esf-take-wake")) == 1
        assert 0 < broker.pttl(wake("esf-take-wake")) <= WAKE_TTL_MS
        # A deleted queue leaves no token behind
        conn.default_channel.queue_delete("esf-take-wake")
    assert not broker.exists("esf-take-wake") and not broker.exists(wake("esf-take-wake"))


def test_a_job_pushed_without_a_token_is_taken_and_a_take_that_leaves_jobs_wakes_the_next_consumer(
        redis_url: str, broker: redis.Redis[bytes]) -> None:
    # Given two jobs pushed by a producer that pushes no wake-up token (kombu's own channel)
    with Connection(redis_url) as plain:
        publish(plain, "esf-take-foreign", {"n": 1}, {"n": 2})
    assert not broker.exists(wake("esf-take-foreign"))
    with EsfConnection(redis_url) as conn:
        # When an ESF consumer takes one of them
        got = conn.default_channel.basic_get("esf-take-foreign", no_ack=False)
        assert got is not None
        # Then, since a job is left, a token wakes the next idle consumer
        assert broker.llen(wake("esf-take-foreign")) == 1
        got.ack()
        # And an idle consumer with no token takes the job all the same, at the latest when its wait times out
        broker.delete(wake("esf-take-foreign"))
        assert [b for b, _ in drain(conn, "esf-take-foreign", 1)] == [{"n": 2}]
    assert broker.hlen("unacked") == 0


def test_a_requeued_job_wakes_its_consumers(redis_url: str, broker: redis.Redis[bytes]) -> None:
    with EsfConnection(redis_url) as conn:
        publish(conn, "esf-take-requeue", {"n": 1})
        [(_, message)] = drain(conn, "esf-take-requeue", 1, ack=False)
        broker.delete(wake("esf-take-requeue"))
        message.requeue()
    assert broker.llen("esf-take-requeue") == 1 and broker.llen(wake("esf-take-requeue")) == 1
    assert broker.hlen("unacked") == 0


def test_priorities_and_the_global_key_prefix_are_as_with_kombus_own_channel(
        redis_url: str, broker: redis.Redis[bytes]) -> None:
    options = {"global_keyprefix": "esf-t:"}
    sequence = [(9, "a"), (0, "b"), (5, "c"), (0, "d"), (3, "e"), (9, "f")]
    orders = []
    for connection_class in (Connection, EsfConnection):
        with connection_class(redis_url, transport_options=options) as conn:
            for priority, body in sequence:
                publish(conn, "esf-take-pri", body, priority=priority)
            orders.append([b for b, _ in drain(conn, "esf-take-pri", len(sequence))])
        if connection_class is EsfConnection:
            # Every key the channel wrote carries the prefix
            assert broker.exists(f"esf-t:{wake('esf-take-pri')}")
            assert all(key.startswith(b"esf-t:") for key in broker.keys("*")), broker.keys("*")
    kombus, esfs = orders
    assert esfs == kombus == ["b", "d", "c", "e", "a", "f"]


def test_a_server_that_forgot_the_take_script_loads_it_again(private_redis: PrivateRedis) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url)
    with EsfConnection(private_redis.url) as conn:
        publish(conn, "esf-take-flush", 1, 2, 3)
        assert [b for b, _ in drain(conn, "esf-take-flush", 1)] == [1]
        client.script_flush()
        assert [b for b, _ in drain(conn, "esf-take-flush", 1)] == [2]
        client.script_flush()
        got = conn.default_channel.basic_get("esf-take-flush", no_ack=False)
        assert got is not None and client.hexists("unacked", got.delivery_tag)
    client.close()


def test_a_full_redis_still_hands_jobs_to_consumers_and_records_them(private_redis: PrivateRedis) -> None:
    # Given a Redis with jobs queued, then full (noeviction: every write that adds is refused)
    client: redis.Redis[bytes] = redis.Redis.from_url(private_redis.url)
    with EsfConnection(private_redis.url) as conn:
        publish(conn, "esf-take-oom", *range(3))
        client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) // 2))
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            client.set("esf-take-oom-probe", "x")
        # When a consumer takes them (kombu's BRPOP consumer pops each and fails to record it: lost)
        got = drain(conn, "esf-take-oom", 3, ack=False, declare=False)
        # Then each was handed over and recorded unacknowledged
        assert [b for b, _ in got] == [0, 1, 2]
        assert client.hlen("unacked") == 3
        # (kombu's acknowledgement is a MULTI transaction, which a full Redis refuses)
        client.config_set("maxmemory", "0")
        for _, message in got:
            message.ack()
        assert client.hlen("unacked") == 0
    client.close()
