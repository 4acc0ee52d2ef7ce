"""Each service is built from its narrow dependencies (esf.lifecycle.ServiceContext and providers of its siblings),
without a Foundation, over real backends: the embedded broker, SQLite files, the SQL event store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from kombu import Connection

import esf
from esf._backends import InjectedBackends
from esf.backends import backends_for
from esf.cache import create_foundation_cache
from esf.config import create_config_service
from esf.config._deferred import APPLY_JOB, DeferredBatches
from esf.events import create_event_store
from esf.events._query import Q
from esf.jobs import JobService
from esf.jobs._celery import EsfCelery, create_celery_app
from esf.lifecycle import ServiceContext
from esf.resilience import Breakers
from esf.sagas import Saga, SagaService, StepContext, step
from esf.services import ServiceRegistry
from esf.settings import TelemetrySettings
from esf.sourcing import Upcasters
from esf.subscriptions import SubscriptionService


def unused(what: str) -> Callable[[], Any]:
    def provider() -> Any:
        pytest.fail(f"the service asked for {what}, which it does not use here")

    return provider


@dataclass
class Parts:
    """A ServiceContext's real parts, and what its hooks and record callbacks were given."""

    settings: esf.Settings
    app: EsfCelery
    store: Any
    breakers: Breakers = field(default_factory=lambda: Breakers(failure_threshold=5, reset_timeout_s=1.0,
                                                                 max_reset_timeout_s=30.0, shared=None))
    hooks: list[str] = field(default_factory=list)
    added: list[Any] = field(default_factory=list)
    built: list[str] = field(default_factory=list)

    def context(self) -> ServiceContext:
        def celery() -> EsfCelery:
            self.built.append("celery")
            return self.app

        def events() -> Any:
            self.built.append("events")
            return self.store

        return ServiceContext(
            settings=self.settings, injected=InjectedBackends(), celery=celery, events=events,
            backends=lambda: backends_for(self.settings), breakers=lambda: self.breakers,
            telemetry=unused("telemetry (disabled)"),
            run_hooks=lambda name, *args, **kwargs: self.hooks.append(name), add_hooks=self.added.append)

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The messages waiting on ``queue`` of the embedded broker (taken off: the test owns the broker)."""
        found = []
        with Connection(self.app.conf.broker_url, transport_options=self.app.conf.broker_transport_options) as conn:
            channel = conn.default_channel
            while (message := channel.basic_get(queue)) is not None:
                args, kwargs, _ = message.decode()
                found.append({"id": message.headers["id"], "task": message.headers["task"], "args": args,
                              "kwargs": kwargs})
                message.ack()
        return found


@pytest.fixture
def parts(data_dir: Path) -> Iterator[Parts]:
    settings = esf.Settings(data_dir=str(data_dir), telemetry=TelemetrySettings(enabled=False))
    app = create_celery_app(settings)
    store = create_event_store(settings)
    yield Parts(settings=settings, app=app, store=store)
    store.close()
    app.close()


def test_a_job_service_sends_jobs_from_its_context_alone(parts: Parts) -> None:
    # Given a JobService built from a ServiceContext (embedded broker, SQLite coordinator), no Foundation
    bound: list[str] = []
    jobs = JobService(parts.context(), bind_task=lambda task: bound.append(task.name))
    assert parts.built == []  # nothing is built before it is used

    def add(a: int, b: int) -> int:
        return a + b

    # When a job is declared and sent
    job = jobs.declare(add, name="ctx.add", unique_for=60)
    handle = job.enqueue(2, 3)
    duplicate = job.enqueue(2, 3)
    # Then the task was bound by its owner, the job's message is on the broker, and the hooks ran
    assert bound == ["ctx.add"] and duplicate.duplicate and duplicate.id == handle.id
    assert parts.hooks == ["before_enqueue", "after_enqueue"]
    assert parts.queued("default") == [{"id": handle.id, "task": "ctx.add", "args": [2, 3], "kwargs": {}}]
    assert jobs.status(handle.id) == "pending"
    jobs.close()


def test_a_service_registry_declares_service_tasks_through_its_jobs_provider(parts: Parts) -> None:
    # Given a ServiceRegistry built from its context and a jobs provider
    jobs = JobService(parts.context())
    registry = ServiceRegistry(parts.context(), jobs=lambda: jobs)

    @registry.task("events", "probe", retries=2, backoff=1.0, timeout=10, idempotency="a probe changes nothing")
    def probe() -> str:
        return "ok"

    # Then the task is a job of that jobs service, on the service's queue, and listed
    assert jobs.get("esf.events.probe").options.queue == "esf.events"
    assert [t.name for t in registry.tasks()] == ["esf.events.probe"]
    # And sending it puts it on that queue
    handle = probe.enqueue()
    assert [m["id"] for m in parts.queued("esf.events")] == [handle.id]
    jobs.close()


def test_a_subscription_service_reads_events_and_sends_its_batches_as_jobs(parts: Parts) -> None:
    # Given a SubscriptionService built from its context, a jobs provider and an upcaster registry
    jobs = JobService(parts.context())
    subscriptions = SubscriptionService(parts.context(), jobs=lambda: jobs, upcasters=Upcasters)
    assert len(parts.added) == 1  # its dead-letter hooks, through add_hooks
    seen: list[Any] = []
    subscriptions.subscribe("ctx.paid", seen.append, filter=Q.type("ctx.paid"))
    # When a matching event is stored and the subscription dispatched
    parts.store.append([esf.Event("ctx.paid", {"order": 1}), esf.Event("ctx.other", {})])
    assert subscriptions.dispatch(["ctx.paid"]) >= 1
    # Then its handler job is on the broker with the batch of the one matching event
    [message] = parts.queued("esf.events")
    assert message["task"] == "esf.subscription.ctx.paid"
    batch_id, positions = message["args"]
    assert len(positions) == 1
    # And the handler runs that batch (as the worker would) with the event
    subscriptions.handle("ctx.paid", batch_id, positions)
    assert [e.data for e in seen] == [{"order": 1}]
    jobs.close()


def reserve(ctx: StepContext, order: str) -> dict[str, Any]:
    return {"reserved": order}


class CtxSaga(Saga):
    name = "ctxsaga"
    starts_on = "ctx.ordered"
    correlate_by = "order"

    reserve_stock = step(reserve, retries=1)

    def on_start(self, event: Any) -> None:
        self.run(self.reserve_stock, event.data["order"])


def test_a_saga_service_starts_an_instance_and_sends_its_step(parts: Parts) -> None:
    # Given a SagaService built from its context and providers of jobs and subscriptions
    jobs = JobService(parts.context())
    subscriptions = SubscriptionService(parts.context(), jobs=lambda: jobs, upcasters=Upcasters)
    sagas = SagaService(parts.context(), jobs=lambda: jobs, subscriptions=lambda: subscriptions)
    sagas.declare(CtxSaga)
    # Then its subscription and step job are declared in the siblings it was given
    assert [s.name for s in subscriptions.declared()] == ["saga.ctxsaga"]
    assert "esf.saga.ctxsaga.reserve_stock" in jobs.names()
    # When its starting event arrives
    [stored] = parts.store.append(esf.Event("ctx.ordered", {"order": "o-1"}))
    instance = sagas.on_event("ctxsaga", stored)
    # Then the instance is stored, its step job in the outbox with it, and relayed to the broker
    assert instance is not None and list(sagas.get("ctxsaga", instance.saga_id).pending.values()) == ["reserve_stock"]
    assert jobs.outbox.drain() == 1
    [message] = parts.queued("default")
    assert message["task"] == "esf.saga.ctxsaga.reserve_stock" and message["args"][0] == instance.saga_id
    jobs.close()


def test_the_cache_is_built_from_its_context_and_puts_its_invalidator_where_it_is_told(parts: Parts) -> None:
    # Given the cache built from its context, with a watch_events callback instead of a Foundation's internals
    watched: list[Any] = []
    jobs = JobService(parts.context())
    cache = create_foundation_cache(parts.context(), jobs=lambda: jobs, config=unused("config"),
                                    watch_events=watched.append)
    loads: list[str] = []

    def load(key: str) -> str:
        loads.append(key)
        return key.upper()

    # When it reads through twice and watches an event type
    assert cache.fetch("k", lambda: load("k"), ttl=60) == "K" and cache.fetch("k", lambda: load("k"), ttl=60) == "K"
    cache.invalidate_on("ctx.changed", key=lambda event: ["k"])
    # Then it loaded once, and handed its invalidator to the callback
    assert loads == ["k"] and len(watched) == 1
    cache.close()
    jobs.close()


def test_deferred_config_batches_are_built_from_the_config_service_and_providers(parts: Parts) -> None:
    # Given DeferredBatches over a real configuration service (SQLite), the event store and a jobs service
    jobs = JobService(parts.context())
    registry = ServiceRegistry(parts.context(), jobs=lambda: jobs)
    config = create_config_service(parts.settings)
    deferred = DeferredBatches(config, events=lambda: cast(Any, parts.store), jobs=lambda: jobs)

    @registry.task("config", "apply_batch", retries=1, backoff=1.0, timeout=10, idempotency="a batch applies once")
    def apply_batch(batch: dict[str, Any], expected_version: int | None = None, actor: str | None = None,
                    batch_id: str | None = None) -> dict[str, Any]:
        return {}

    assert jobs.get(APPLY_JOB) is apply_batch
    # When a batch is scheduled, then applied (as the task would)
    at = datetime.now(UTC) + timedelta(hours=1)
    batch = deferred.schedule_batch({"ctx.limit": 3}, at=at, actor="test")
    [scheduled] = deferred.scheduled()
    assert scheduled.id == batch.id and scheduled.changes == {"ctx.limit": 3} and scheduled.state == "pending"
    [message] = parts.queued("esf.config")
    assert message["task"] == APPLY_JOB and message["kwargs"]["batch_id"] == batch.id
    # Then applying it writes the configuration and records the outcome in its stream
    deferred.apply({"ctx.limit": 3}, expected_version=None, actor="test", batch_id=scheduled.id)
    assert config.get("ctx.limit") == 3
    assert deferred.get(scheduled.id).state == "applied"
    config.close()
    jobs.close()
