"""The worker's consuming connection reuses one Redis client object per channel (workers/_redis.py)."""

from __future__ import annotations

from esf.workers._redis import Channel, reuse_clients
from kombu import Connection
from kombu.transport import redis as kombu_redis

from tests.conftest import AMQP_URL


def test_a_channel_hands_out_one_client_per_pool(redis_url: str) -> None:
    with Connection(redis_url) as conn:
        reuse_clients(conn)
        channel = conn.channel()
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:
            assert client is first
            assert client.ping()
        # The event loop's client stays kombu's own, one per call
        assert channel._create_client(asynchronous=True) is not channel._create_client(asynchronous=True)
        # A replaced pool gets a client of its own
        channel._pool = None
        assert channel._create_client() is not first
        # And the channel still carries messages
        channel.queue_declare("esf-test-reuse")
        channel.basic_publish(channel.prepare_message("hello"), routing_key="esf-test-reuse", exchange="")
        message = channel.basic_get("esf-test-reuse", no_ack=True)
        assert message is not None and message.body == b"hello"
        channel.queue_delete("esf-test-reuse")


def test_other_transports_are_left_alone() -> None:
    conn = Connection(AMQP_URL)
    reuse_clients(conn)
    assert not hasattr(conn.transport, "Channel") or conn.transport.Channel is not Channel
    plain = Connection("redis://127.0.0.1:6379/0")
    assert plain.transport.Channel is kombu_redis.Channel
