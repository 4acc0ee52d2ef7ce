"""Brokers and workers for the job tests: every test module runs against Redis and RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.conftest import AMQP_URL, REDIS_HOST, REDIS_PORT, lease_redis_db, require_port

from . import apps
from .harness import Worker, settings_env


@dataclass
class Broker:
    kind: str
    env: dict[str, str]
    queue: str

    def foundation(self) -> Foundation:
        return apps.build(esf.Settings.from_env(self.env))


@pytest.fixture(scope="module", params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    data_dir = str(tmp_path_factory.mktemp("esf-data"))
    with lease_redis_db() as db:
        redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        if request.param == "redis":
            env = settings_env(redis_url, queues=(queue,), data_dir=data_dir)
        else:
            require_port(5672, "RabbitMQ")
            env = settings_env(AMQP_URL, queues=(queue,), redis_url=redis_url, data_dir=data_dir)
        b = Broker(request.param, env, queue)
        try:
            yield b
        finally:
            if request.param == "amqp":
                delete_amqp_queues(b)


def delete_amqp_queues(b: Broker) -> None:
    from kombu import Connection

    queues = esf.Settings.from_env(b.env).jobs.all_queues
    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        for name in (*queues, *(f"{q}.dlq" for q in queues)):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
        for name in queues:
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()


@pytest.fixture(scope="module")
def worker(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    w = Worker(broker.env, log)
    try:
        w.wait_ready()
        yield w
    finally:
        w.discard()


@pytest.fixture(scope="module")
def fnd(broker: Broker) -> Iterator[Foundation]:
    f = broker.foundation()
    try:
        yield f
    finally:
        f.close()
