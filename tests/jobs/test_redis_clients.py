"""An ESF app's Redis channels reuse one client object each (esf/jobs/_redis_clients.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

import esf
from esf.foundation import Foundation
from esf.jobs._redis_clients import Channel, EsfConnection, reuse_clients
from tests.conftest import AMQP_URL, require_port

from .harness import settings_env


def test_a_channel_hands_out_one_client_per_pool(redis_url: str) -> None:
    with EsfConnection(redis_url) as conn:
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


def test_a_channel_closed_after_its_connection_was_collected_keeps_its_unacked_message(redis_url: str) -> None:
    import redis

    # Given a channel holding a delivered, unacknowledged message
    conn = EsfConnection(redis_url)
    channel = conn.default_channel
    channel.queue_declare("esf-test-collected")
    channel.basic_publish(channel.prepare_message("held"), routing_key="esf-test-collected", exchange="")
    assert channel.basic_get("esf-test-collected", no_ack=False) is not None
    # When the connection is collected (the transport lets go of its client), then closed, as Celery's
    # consumer does after a connection error
    conn._do_close_transport()
    conn.close()
    # Then the close did not raise (kombu's raises AttributeError, which stopped the worker), and the
    # message is still in the unacked index, for the restore sweep
    client = redis.Redis.from_url(redis_url)
    assert client.hlen("unacked") == 1 and client.llen("esf-test-collected") == 0



def test_an_acknowledgement_after_the_connection_was_collected_is_a_connection_error(redis_url: str) -> None:
    import logging

    import redis

    # Given a message delivered on a channel, not yet acknowledged (its job still running)
    conn = EsfConnection(redis_url)
    channel = conn.default_channel
    channel.queue_declare("esf-test-late-ack")
    channel.basic_publish(channel.prepare_message("late"), routing_key="esf-test-late-ack", exchange="")
    message = channel.basic_get("esf-test-late-ack", no_ack=False)
    assert message is not None
    # When the connection is collected and closed after a connection error, as Celery's consumer does,
    # and the job's acknowledgement arrives afterwards (Celery's event loop runs it as Celery does, through
    # ack_log_error with the connection's errors)
    conn._do_close_transport()
    conn.close()
    message.ack_log_error(logging.getLogger("esf.test"), conn.connection_errors)
    # Then the acknowledgement failed as a connection error, logged (kombu's raises AttributeError, which
    # stopped the worker: "Unrecoverable error"), and the message is still in the unacked index, for the
    # restore sweep to give back
    client = redis.Redis.from_url(redis_url)
    assert client.hlen("unacked") == 1 and client.llen("esf-test-late-ack") == 0
    client.delete("unacked", "unacked_index")

def test_clones_keep_the_channel(redis_url: str) -> None:
    # kombu's connection pools (Celery's producer pool among them) open clones
    conn = EsfConnection(redis_url)
    clone = conn.clone()
    assert type(clone) is EsfConnection
    assert clone.transport.Channel is Channel
    assert conn.as_uri() == Connection(redis_url).as_uri()  # the URL reads as kombu's own


def test_a_redis_transport_of_another_kind_is_left_alone(redis_url: str) -> None:
    class Custom(kombu_redis.Transport):  # type: ignore[misc]
        pass

    assert reuse_clients(Custom(client=Connection(redis_url))).Channel is kombu_redis.Channel
    assert Connection(redis_url).transport.Channel is kombu_redis.Channel  # kombu's own connections too


def _app(url: str, redis_url: str, tmp_path: Path) -> Foundation:
    return Foundation(esf.Settings.from_env(settings_env(url, queues=("q-reuse",), redis_url=redis_url,
                                                         data_dir=str(tmp_path))))


def test_an_esf_app_publishes_and_consumes_on_reusing_channels(redis_url: str, tmp_path: Path) -> None:
    fnd = _app(redis_url, redis_url, tmp_path)
    try:
        app = fnd.celery
        with app.producer_or_acquire() as producer:
            assert isinstance(producer.channel, Channel)
            client = producer.channel._create_client()
            assert producer.channel._create_client() is client
        with app.connection_for_read() as conn:
            assert isinstance(conn.default_channel, Channel)

        @fnd.job(name="reuse.echo", queue="q-reuse")
        def echo(x: int) -> int:
            return x

        handle = echo.enqueue(7)
        with app.connection_for_read() as conn:
            message = conn.default_channel.basic_get("q-reuse", no_ack=True)
        assert message is not None and message.headers["id"] == handle.id
    finally:
        fnd.close()


@pytest.mark.parametrize("scheme", ["amqp", "embedded"])
def test_other_brokers_keep_kombus_channels(scheme: str, redis_url: str, tmp_path: Path) -> None:
    if scheme == "amqp":
        require_port(5672, "RabbitMQ")
        url = AMQP_URL
    else:
        url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    fnd = _app(url, redis_url, tmp_path)
    try:
        with fnd.celery.connection_for_write() as conn:
            assert not isinstance(conn.default_channel, Channel)
    finally:
        fnd.close()
