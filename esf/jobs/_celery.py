"""The Celery app of a Foundation: reliability settings, routed queues and their DLQs."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery, states
from celery.app.backends import by_url
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu import Exchange, Queue
from kombu.utils.encoding import bytes_to_str

from ._deadletter import dlq_name
from ._redis_clients import EsfAMQP

if TYPE_CHECKING:
    from ..foundation import Foundation
    from ..settings import Settings

#: The exchange RabbitMQ dead-letters into; each ``<queue>.dlq`` is bound to it.
DLX_EXCHANGE = "esf.dlx"
#: RabbitMQ delivery limit of ESF's own service queues.
SERVICE_DELIVERY_LIMIT = 5
#: A job queue's RabbitMQ ``x-delivery-limit`` is ``jobs.max_deliveries`` times this.
BROKER_DELIVERY_LIMIT_FACTOR = 4


class EsfCelery(Celery):
    """A Celery app that knows the Foundation that owns it.

    Its connections are :class:`~esf.jobs._redis_clients.EsfConnection`: on Redis,
    a channel builds one client object instead of one per command.
    """

    foundation: Foundation
    amqp_cls = EsfAMQP

    def _get_backend(self) -> Any:
        backend, url = by_url(self.backend_cls or self.conf.result_backend, self.loader)
        if backend is RedisBackend:
            backend = EsfRedisBackend
        return backend(app=self, url=url)


#: Stores a job's result unless a success is stored already, and publishes it: one round trip.
#: KEYS[1] the result key; ARGV[1] the encoded result; ARGV[2] its time to live in seconds (0: none).
_STORE_RESULT_LUA = """
local current = redis.call('GET', KEYS[1])
if current and string.find(current, 'SUCCESS', 1, true) then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class EsfRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend with fewer round trips per job.

    * No subscription per sent job. Celery subscribes to a job's result channel
      as it sends the job, and unsubscribes when the ``AsyncResult`` is dropped:
      two Redis commands per enqueue that ESF's handles never use.
      ``JobHandle.wait`` subscribes when it is called, then reads the stored
      result, so a result stored before the subscription is not missed.
    * One round trip per stored state. Celery reads the stored state first (a
      state stored after a success is dropped: a redelivered copy of a job that
      succeeded must not overwrite its result), then sets and publishes the new
      one in a transaction. ESF does the same check, set and publish in one Lua
      script, which also closes the window between Celery's read and its write.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(_STORE_RESULT_LUA)

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
                      **kwargs: Any) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str | bytes) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._store_unless_succeeded, (self.get_key_for_task(task_id), value, expires))
        return result

    def _store_unless_succeeded(self, key: Any, value: Any, expires: Any) -> int:
        ttl = int(expires) if expires else 0
        return int(self._store_script(keys=[key], args=[value, ttl]))


def job_queue(settings: Settings, name: str) -> Queue:
    """The kombu Queue of a routed job queue, with dead-lettering on RabbitMQ."""
    if settings.broker_kind == "amqp":
        return Queue(
            name,
            Exchange(name, type="direct", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DLX_EXCHANGE,
                "x-dead-letter-routing-key": dlq_name(name),
                # Queue arguments cannot change once declared: ESF's shared service queues
                # keep a fixed limit, so deployments with other settings can share a vhost.
                # ESF counts executions itself (jobs.max_deliveries); the broker's limit is a
                # backstop, looser because RabbitMQ 3.x also counts a message handed back
                # unrun (a warm shutdown returning a held ETA job).
                "x-delivery-limit": (
                    SERVICE_DELIVERY_LIMIT if name in settings.jobs.service_queues
                    else settings.jobs.max_deliveries * BROKER_DELIVERY_LIMIT_FACTOR
                ),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def dead_letter_queue(settings: Settings, name: str) -> Queue:
    """The kombu Queue of ``<queue>.dlq`` (``name`` is the DLQ's own name)."""
    if settings.broker_kind == "amqp":
        return Queue(
            name,
            Exchange(DLX_EXCHANGE, type="direct", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def celery_config(settings: Settings, max_timeout_s: float | None = None) -> dict[str, Any]:
    """Celery settings for at-least-once delivery on the configured broker."""
    jobs = settings.jobs
    timeout = max_timeout_s or jobs.default_timeout_s
    conf: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A failed or timed-out job is dead-lettered by ESF itself, then acknowledged.
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.workers.soft_shutdown_timeout_s,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_consumer": "esf.workers._consumer:EsfConsumer",
        "worker_hijack_root_logger": False,
        # Monitoring costs a publish per state change: opt-in (Flower switches worker events on itself).
        "task_track_started": settings.jobs.track_started,
        "task_send_sent_event": settings.workers.send_events,
        "worker_send_task_events": settings.workers.send_events,
        "task_time_limit": timeout + jobs.hard_timeout_grace_s,
        "task_soft_time_limit": timeout,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 5, "interval_start": 0, "interval_step": 0.5,
                                      "interval_max": 3},
        "result_expires": jobs.result_expires_s,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.resilience.broker_connect_timeout_s,
        "broker_connection_max_retries": None,
        "task_default_queue": jobs.default_queue,
        "task_default_exchange": jobs.default_queue,
        "task_default_routing_key": jobs.default_queue,
        "task_create_missing_queues": False,
        "task_queues": [job_queue(settings, q) for q in jobs.all_queues],
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
    kind = settings.broker_kind
    if kind == "redis":
        transport = {
            "visibility_timeout": jobs.visibility_timeout_s,
            "unacked_restore_interval": jobs.restore_interval_s,
            "unacked_restore_throttle": 1,
            "fanout_prefix": True,
            "fanout_patterns": True,
            "socket_timeout": settings.resilience.redis_timeout_s,
            "socket_connect_timeout": settings.resilience.redis_connect_timeout_s,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        }
        conf["broker_transport_options"] = transport
        conf["result_backend_transport_options"] = {"visibility_timeout": jobs.visibility_timeout_s}
        conf["visibility_timeout"] = jobs.visibility_timeout_s
    elif kind == "amqp":
        conf["broker_transport_options"] = {"confirm_publish": True}
        conf["task_default_queue_type"] = "quorum"
        conf["worker_detect_quorum_queues"] = True
        conf["broker_heartbeat"] = 30
    elif kind == "embedded":
        conf["broker_transport"] = "esf.jobs._embedded:Transport"
        conf["broker_pool_limit"] = 4
        conf["worker_cancel_long_running_tasks_on_connection_loss"] = False
    return conf


def create_celery_app(settings: Settings, name: str = "esf") -> EsfCelery:
    """A Celery app configured from ``settings``; its owner sets ``app.foundation``."""
    if settings.broker_kind == "embedded":
        settings.data_path.mkdir(parents=True, exist_ok=True)
    app = EsfCelery(name, set_as_current=False, fixups=[])
    app.conf.update(celery_config(settings))
    return app
