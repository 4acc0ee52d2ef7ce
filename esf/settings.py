"""Settings: nested frozen dataclasses, read from the environment or a TOML file.

This module is the only place in ESF that reads ``os.environ``. Every field
can be set as ``ESF_<FIELD>`` (top level) or ``ESF_<SECTION>_<FIELD>`` (one
section per service), or in a TOML file named by ``ESF_SETTINGS`` with the
same names (``[jobs]``, ``[flower]`` …). The environment wins over the file.
Invalid or unknown settings raise :class:`~esf.errors.SettingsError` naming
the setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .errors import SettingsError
from .secrets import Secret

__all__ = [
    "CacheSettings",
    "ConfigSettings",
    "EventSettings",
    "FlagSettings",
    "FlowerSettings",
    "HealthSettings",
    "JobSettings",
    "ResilienceSettings",
    "SecretsSettings",
    "ServicesSettings",
    "Settings",
    "SagaSettings",
    "SubscriptionSettings",
    "TelemetrySettings",
    "WorkerSettings",
    "strip_url_credentials",
]

#: Queue names: letters, digits, ``_ . -``; a name may not end in ``.dlq``.
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")

BrokerKind = Literal["redis", "amqp", "embedded", "memory"]


def validate_queue_name(name: object, setting: str = "queue") -> str:
    """Return ``name`` when it is a valid queue name, else raise ``SettingsError``."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.match(name) or name.endswith(".dlq"):
        raise SettingsError(
            f"{setting}: {name!r} is not a valid queue name (letters, digits, '_', '.', '-'; "
            "at most 100 characters; not ending in '.dlq')",
            setting=setting,
        )
    return name


#: ESF's own services, each with a routed queue ``<service_namespace>.<service>`` and its ``.dlq``.
SERVICES: tuple[str, ...] = ("events", "config", "telemetry", "cache", "flags", "secrets", "jobs", "sagas")


@dataclass(frozen=True)
class JobSettings:
    """Jobs, queues, retries and delivery guarantees."""

    #: Routed job queues; each gets a ``<queue>.dlq``.
    queues: tuple[str, ...] = ("default",)
    default_queue: str = "default"
    default_retries: int = 3
    default_backoff_s: float = 2.0
    default_max_backoff_s: float = 600.0
    default_timeout_s: float = 300.0
    #: Seconds between a soft time limit and the hard kill.
    hard_timeout_grace_s: float = 5.0
    #: Redis broker: seconds before an unacknowledged job of a dead worker is
    #: delivered again. Live workers keep a lease on their jobs, so a job may
    #: run for longer than this without being delivered twice.
    visibility_timeout_s: float = 60.0
    #: Seconds between two sweeps that redeliver a dead worker's jobs.
    restore_interval_s: float = 5.0
    #: Redis: restart a worker whose consumer holds no job while its queues have had
    #: jobs waiting this many seconds (Celery's consumer can stall after a reconnect).
    stalled_consumer_restart_s: float = 30.0
    #: Record when a job starts (``status()`` then reports ``running``); one more write per job.
    track_started: bool = False
    #: Executions of one attempt that never finished (a worker killed mid-job
    #: counts one) before the job goes to the dead-letter queue. Counted when a
    #: redelivered job starts running, so a job handed back unrun (warm shutdown,
    #: reconnect, a held ETA job) is not counted; RabbitMQ's x-delivery-limit is
    #: set to 4 times this as a backstop.
    max_deliveries: int = 5
    result_expires_s: int = 86400
    #: Largest JSON-encoded job arguments accepted by ``enqueue`` (bytes).
    max_payload_bytes: int = 1_048_576
    #: Prefix of ESF's service queues (``esf.events`` …). Applications sharing a
    #: RabbitMQ vhost or a Redis database need distinct namespaces.
    service_namespace: str = "esf"
    #: Warn or refuse at start when the Redis broker can evict keys or keeps nothing on disk.
    redis_durability_check: Literal["warn", "error", "off"] = "warn"
    #: Seconds a DLQ replay's claim on an entry lasts: the entries of a replay that
    #: died come back to their DLQ after this (Redis; RabbitMQ returns them at once).
    dlq_claim_ttl_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.queues:
            raise SettingsError("jobs.queues: at least one queue is required", setting="jobs.queues")
        for q in self.queues:
            validate_queue_name(q, "jobs.queues")
        if self.default_queue not in self.queues:
            raise SettingsError(
                f"jobs.default_queue: {self.default_queue!r} is not one of jobs.queues {list(self.queues)}",
                setting="jobs.default_queue",
            )
        validate_queue_name(self.service_namespace, "jobs.service_namespace")
        for q in self.queues:
            if q in self.service_queues:
                raise SettingsError(f"jobs.queues: {q!r} is reserved for ESF's own services", setting="jobs.queues")
        _non_negative(self, "jobs", ("default_retries", "default_backoff_s", "hard_timeout_grace_s"))
        _positive(
            self,
            "jobs",
            (
                "default_max_backoff_s",
                "default_timeout_s",
                "visibility_timeout_s",
                "restore_interval_s",
                "stalled_consumer_restart_s",
                "max_deliveries",
                "result_expires_s",
                "max_payload_bytes",
                "dlq_claim_ttl_s",
            ),
        )


    def service_queue(self, service: str) -> str:
        """The routed queue of one of ESF's services, e.g. ``esf.events``."""
        return f"{self.service_namespace}.{service}"

    @cached_property
    def service_queues(self) -> tuple[str, ...]:
        return tuple(self.service_queue(s) for s in SERVICES)

    @cached_property
    def all_queues(self) -> tuple[str, ...]:
        """The application's queues followed by ESF's service queues."""
        return self.queues + self.service_queues


@dataclass(frozen=True)
class WorkerSettings:
    """Defaults for ``esf worker``; profiles in ``esf.workers`` refine them."""

    profile: str = "default"
    concurrency: int | None = None
    pool: Literal["prefork", "threads", "solo"] | None = None
    soft_shutdown_timeout_s: float = 30.0
    #: Publish task events from the start (Flower turns them on by itself when it runs).
    send_events: bool = False
    #: Replace a prefork pool process after this many jobs, to bound memory that job code leaks
    #: (each replacement costs a fork and the new process's start-up). None: never, as in Celery.
    max_tasks_per_child: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise SettingsError("workers.concurrency: must be at least 1", setting="workers.concurrency")
        limit = self.max_tasks_per_child
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise SettingsError(
                f"workers.max_tasks_per_child: must be a whole number of jobs >= 1 (or unset), got {limit!r}",
                setting="workers.max_tasks_per_child",
            )


@dataclass(frozen=True)
class FlowerSettings:
    """``esf flower``: address and basic-auth credentials."""

    address: str = "127.0.0.1"
    port: int = 5555
    user: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class EventSettings:
    """The event store."""

    #: Backend: ``sqlalchemy`` (PostgreSQL or SQLite, every tier), ``memory`` (this process only, the
    #: recorder tier: for tests) or any ``events.<name>`` entry point of group ``esf.plugins``.
    backend: str = "sqlalchemy"
    max_event_bytes: int = 1_048_576
    #: Record job lifecycle events (enqueued, started, retried, …).
    record_job_events: bool = True
    #: Longest time, in seconds, a job-history (or audit) event waits in its process before it is
    #: written: the writer gathers this long for one transaction per batch (at most 500 events).
    history_flush_s: float = 0.5
    #: Failed writes of one spooled append, while the database is reachable, before it is quarantined
    #: (``esf events spool list``); the appends after it are then written.
    spool_max_attempts: int = 10

    def __post_init__(self) -> None:
        _positive(self, "events", ("max_event_bytes", "history_flush_s"))
        _positive(self, "events", ("spool_max_attempts",))
        if not self.backend:
            raise SettingsError("events.backend: must not be empty", setting="events.backend")


@dataclass(frozen=True)
class SubscriptionSettings:
    """Subscriptions and projections (``[subscriptions]``, ``ESF_SUBSCRIPTIONS_*``)."""

    #: Run the dispatcher in every worker's main process.
    dispatcher: bool = True
    #: Listen for wake-ups (PostgreSQL LISTEN/NOTIFY); off: poll only.
    wakeups: bool = True
    #: Seconds between two looks when nothing woke the dispatcher (the only trigger on SQLite).
    poll_interval_s: float = 0.5
    #: Seconds between two updates of the lag gauges.
    lag_interval_s: float = 10.0

    def __post_init__(self) -> None:
        _positive(self, "subscriptions", ("poll_interval_s", "lag_interval_s"))


@dataclass(frozen=True)
class SagaSettings:
    """Sagas (``[sagas]``, ``ESF_SAGAS_*``)."""

    #: Times a transition is tried again when another transition of the same instance came first.
    cas_attempts: int = 20
    #: Queue of the saga steps that name none (default: ``jobs.default_queue``).
    step_queue: str | None = None

    def __post_init__(self) -> None:
        _positive(self, "sagas", ("cas_attempts",))
        if self.step_queue is not None:
            validate_queue_name(self.step_queue, "sagas.step_queue")


@dataclass(frozen=True)
class ConfigSettings:
    """The configuration service."""

    #: Versions kept in the history (older ones are dropped; rollback reaches only those kept).
    history_limit: int = 1000
    #: Largest JSON-encoded value of one changed path (bytes).
    max_value_bytes: int = 65_536
    #: Prefix of every Redis key and channel of the configuration service.
    redis_prefix: str = "esf:config:"
    #: SQLite store: seconds between two checks of the version by each process.
    poll_interval_s: float = 0.5
    #: Seconds between two reconciliations (the version is read from the store even
    #: when no notification arrived: pub/sub is at-most-once).
    reconcile_interval_s: float = 5.0
    #: Seconds between two heartbeats of a process (it also beats right after applying a version).
    heartbeat_interval_s: float = 2.0
    #: A process that has not beaten for this long is no longer live (seconds).
    node_ttl_s: float = 10.0
    #: A live process still on an older version this long after the next version was
    #: committed is reported as diverged (seconds).
    diverged_after_s: float = 30.0
    #: Seconds a call to the store may take before it counts as unreachable.
    store_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _positive(
            self,
            "config",
            (
                "history_limit",
                "max_value_bytes",
                "poll_interval_s",
                "reconcile_interval_s",
                "heartbeat_interval_s",
                "node_ttl_s",
                "diverged_after_s",
                "store_timeout_s",
            ),
        )
        if not self.redis_prefix:
            raise SettingsError("config.redis_prefix: must not be empty", setting="config.redis_prefix")
        if self.node_ttl_s <= self.heartbeat_interval_s:
            raise SettingsError(
                "config.node_ttl_s: must be greater than config.heartbeat_interval_s", setting="config.node_ttl_s"
            )


@dataclass(frozen=True)
class TelemetrySettings:
    """Telemetry and exporters (see docs/telemetry.md)."""

    #: ``False``: metrics stay in memory; no background thread, shared store or exporter.
    enabled: bool = True
    #: Exporters to start: entry-point names (``telemetry.prometheus``) or short names (``prometheus``).
    exporters: tuple[str, ...] = ()
    #: Label sets per metric before samples go to the ``__overflow__`` series.
    max_label_sets: int = 1000
    #: Distinct metric names per process.
    max_metrics: int = 5000
    #: Shared store of the cluster-wide view: ``auto`` (Redis when one is configured, else SQLite under
    #: ``data_dir``), ``redis``, ``sqlite`` or ``none`` (this process only).
    store: Literal["auto", "redis", "sqlite", "none"] = "auto"
    #: Prefix of every Redis key of the shared store.
    key_prefix: str = "esf:telemetry:"
    #: Seconds between two pushes of a process's increments to the shared store.
    push_interval_s: float = 1.0
    #: Seconds between two batches handed to the exporters.
    export_interval_s: float = 10.0
    #: Batches queued per exporter before new ones are dropped (and counted).
    exporter_buffer: int = 8
    #: Consecutive export failures that open an exporter's circuit breaker.
    breaker_failures: int = 3
    #: Seconds an open exporter breaker waits before a trial export.
    breaker_reset_s: float = 30.0
    #: Seconds ``configure_exporters`` waits for an exporter's start (or shutdown) before leaving it behind.
    exporter_call_timeout_s: float = 5.0
    prometheus_address: str = "127.0.0.1"
    prometheus_port: int = 9464
    #: Basic-auth credentials of ``/metrics``; required unless ``prometheus_auth`` is false.
    prometheus_user: str | None = None
    prometheus_password: Secret | None = None
    prometheus_auth: bool = True
    statsd_host: str = "127.0.0.1"
    statsd_port: int = 8125
    statsd_prefix: str = "esf"
    #: Log level of the ``telemetry.log`` exporter.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _positive(
            self,
            "telemetry",
            ("max_label_sets", "max_metrics", "push_interval_s", "export_interval_s", "exporter_buffer",
             "breaker_failures", "breaker_reset_s", "exporter_call_timeout_s"),
        )
        for port in ("prometheus_port", "statsd_port"):
            if not 0 <= getattr(self, port) <= 65535:
                raise SettingsError(f"telemetry.{port}: must be between 0 and 65535", setting=f"telemetry.{port}")


@dataclass(frozen=True)
class FlagSettings:
    """Feature flags (evaluated locally from the configuration's ``flags`` subtree)."""

    #: Share of evaluations recorded as ``flag.exposure`` events (0: none, 1: every one; in a
    #: ``fnd.flags.scope`` or a job, at most one per flag).
    exposure_sample_rate: float = 0.0
    #: What a job evaluating a flag its enqueuing request evaluated gets: ``consistent`` (the
    #: request's answer, carried in the job's headers) or ``latest`` (a fresh evaluation).
    job_consistency: Literal["consistent", "latest"] = "consistent"

    def __post_init__(self) -> None:
        if not 0.0 <= self.exposure_sample_rate <= 1.0:
            raise SettingsError("flags.exposure_sample_rate: must be from 0 to 1", setting="flags.exposure_sample_rate")


@dataclass(frozen=True)
class SecretsSettings:
    """The secrets service (see docs/secrets.md); ``ESF_SECRETS_<FIELD>``."""

    #: Backend: ``env``, ``file``, ``vault`` or any ``secrets.<name>`` entry point of group ``esf.plugins``.
    backend: str = "env"
    #: ``env`` backend: variable ``<env_prefix><PATH>_<KEY>`` (upper case, ``/`` and ``-`` as ``_``).
    env_prefix: str = "SECRET_"
    #: ``file`` backend: a JSON object ``{path: {key: value}}`` (default ``<data_dir>/secrets.json``).
    file_path: str | None = None
    vault_url: str = "http://127.0.0.1:8200"
    #: ``token``, ``approle`` or ``kubernetes``.
    vault_auth: Literal["token", "approle", "kubernetes"] = "token"
    vault_token: Secret | None = None
    vault_role_id: str | None = None
    vault_secret_id: Secret | None = None
    vault_kubernetes_role: str | None = None
    vault_kubernetes_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    #: Mount of the auth method (default: the method's name, ``approle`` or ``kubernetes``).
    vault_auth_mount: str | None = None
    #: Mount of the KV version 2 engine.
    vault_mount: str = "secret"
    vault_namespace: str | None = None
    #: Verify Vault's TLS certificate (``vault_ca_cert``: a CA bundle file to verify it with).
    vault_verify: bool = True
    vault_ca_cert: str | None = None
    #: Longest time, in seconds, one call to the backend may take on a request path.
    timeout_s: float = 5.0
    #: Renew a lease (or the token) when less than this fraction of its duration is left.
    renew_margin: float = 0.5
    #: While the backend is unreachable, a cached value without a lease is served for at most this many
    #: seconds after its last successful read; then reads raise ``ServiceUnavailable``.
    hard_expiry_s: float = 3600.0
    #: A cached value younger than this is served without asking the backend (seconds).
    cache_ttl_s: float = 30.0
    #: Seconds between two runs of ``esf.secrets.refresh`` on the beat schedule.
    refresh_interval_s: float = 60.0
    #: Paths every refresh reads (besides those the process has read or subscribed to).
    watch: tuple[str, ...] = ()
    #: A thread in each process holding leases or subscriptions renews the leases at their renewal
    #: point and refreshes every ``refresh_interval_s`` (a job on the broker cannot reach every process).
    refresh_thread: bool = True
    #: Consecutive backend failures that open the backend's circuit breaker.
    breaker_failures: int = 3
    #: Seconds an open breaker waits before a trial call.
    breaker_reset_s: float = 10.0

    def __post_init__(self) -> None:
        _positive(self, "secrets", ("timeout_s", "hard_expiry_s", "refresh_interval_s", "breaker_failures",
                                    "breaker_reset_s"))
        _non_negative(self, "secrets", ("cache_ttl_s",))
        if not 0 < self.renew_margin < 1:
            raise SettingsError("secrets.renew_margin: must be between 0 and 1 (a fraction of the lease)",
                                setting="secrets.renew_margin")
        if not self.backend:
            raise SettingsError("secrets.backend: must not be empty", setting="secrets.backend")


@dataclass(frozen=True)
class CacheSettings:
    """The cache service: an in-process tier in front of a shared Redis tier (see docs/cache.md)."""

    #: ``auto``: the Redis tier when a Redis is configured, else the in-process tier alone;
    #: ``redis``: require Redis; ``local``: the in-process tier alone.
    backend: Literal["auto", "redis", "local"] = "auto"
    #: Prefix of every Redis key and of the invalidation channel.
    redis_prefix: str = "esf:cache:"
    #: Eviction policy of the in-process tier: ``ttl`` (soonest expiry first, then least recently
    #: used), ``lru`` or ``lfu``.
    local_policy: Literal["ttl", "lru", "lfu"] = "ttl"
    #: Entries kept in the in-process tier (0 turns the tier off).
    local_max_entries: int = 10_000
    #: Bytes (encoded values plus keys) kept in the in-process tier.
    local_max_bytes: int = 64 * 1024 * 1024
    #: Largest encoded value accepted (bytes); a larger one raises ``PayloadTooLarge``.
    max_value_bytes: int = 1_048_576
    #: Time to live of an entry when the call names none (seconds).
    default_ttl_s: float = 300.0
    #: Seconds an expired value is still kept, to be served by ``stale_on_error``.
    stale_grace_s: float = 60.0
    #: Longest time an in-process copy is served without checking the shared tier (seconds):
    #: the bound on staleness when an invalidation message is lost.
    coherence_s: float = 2.0
    #: Lease of the lock that lets one process run a loader (seconds); a killed holder's lock
    #: frees itself after this.
    lock_lease_s: float = 5.0
    #: Longest wait for another process's loader before running it here (seconds). Keep it above
    #: ``lock_lease_s``: a killed holder is then replaced by one waiter, not by all of them.
    stampede_wait_s: float = 10.0
    #: Seconds between two looks at the shared tier while waiting for another process's loader.
    stampede_poll_s: float = 0.02
    #: Socket timeout of every call to the shared tier (seconds).
    redis_timeout_s: float = 0.5
    #: Consecutive shared-tier failures that open its circuit breaker.
    breaker_failures: int = 3
    #: Seconds the open breaker waits before a trial call.
    breaker_reset_s: float = 2.0
    #: Invalidations made while the shared tier is down, kept to be replayed when it returns (beyond
    #: this, a namespace's pending invalidations fold into one bump of it).
    max_pending_invalidations: int = 10_000

    def __post_init__(self) -> None:
        _non_negative(self, "cache", ("local_max_entries", "stale_grace_s"))
        _positive(
            self,
            "cache",
            ("local_max_bytes", "max_value_bytes", "default_ttl_s", "coherence_s", "lock_lease_s",
             "stampede_wait_s", "stampede_poll_s", "redis_timeout_s", "breaker_failures", "breaker_reset_s",
             "max_pending_invalidations"),
        )
        if not self.redis_prefix:
            raise SettingsError("cache.redis_prefix: must not be empty", setting="cache.redis_prefix")


@dataclass(frozen=True)
class ServicesSettings:
    """ESF's own service tasks: the default schedules ``esf beat`` runs (see docs/services.md).

    Each default schedule has a switch (``<service>_<verb>``) and an interval in seconds
    (``<service>_<verb>_every_s``); ``schedules = false`` turns every one of them off.
    A schedule switched off here is removed from the schedule store when beat starts.
    """

    #: Master switch of every default schedule.
    schedules: bool = True
    #: Longest delay, in seconds, between two attempts of any service task (None: each task's own policy).
    max_backoff_s: float | None = None
    #: ``esf.events.prune``: delete events older than ``events_retention_s`` (off: deleting history is a choice).
    events_prune: bool = False
    events_prune_every_s: float = 3600.0
    #: Age, in seconds, beyond which ``esf.events.prune`` deletes events (the retention rules still keep
    #: each stream's latest event and anything a subscription has not processed).
    events_retention_s: float = 90 * 86400.0
    #: Event types ``esf.events.prune`` deletes (empty: every type).
    events_prune_types: tuple[str, ...] = ()
    #: ``esf.events.outbox_sweep``: relay outbox rows that no in-process relay took.
    events_outbox_sweep: bool = True
    events_outbox_sweep_every_s: float = 60.0
    #: Age, in seconds, an outbox row must reach before ``esf.events.outbox_sweep`` relays it: younger rows are
    #: left to the in-process relay of the process that wrote them (it relays within about a second).
    events_outbox_sweep_after_s: float = 30.0
    #: ``esf.config.reconcile``: republish to processes that stay behind, record ``config.diverged``,
    #: clear processes that are gone.
    config_reconcile: bool = True
    config_reconcile_every_s: float = 30.0
    #: ``esf.telemetry.export``: push the cluster-wide view to these push-style exporters (``statsd``) from one
    #: task run per interval, instead of a partial view from every process; the schedule runs when any is named.
    telemetry_push_exporters: tuple[str, ...] = ()
    telemetry_export: bool = True
    telemetry_export_every_s: float = 10.0
    #: ``esf.telemetry.rollup``: per-minute run-time figures of every job and queue from the job history
    #: (what ``esf metrics jobs`` reads).
    telemetry_rollup: bool = True
    telemetry_rollup_every_s: float = 60.0
    #: Seconds after its end when a minute is complete and rolled up (the job history appends in batches).
    telemetry_rollup_settle_s: float = 120.0
    #: Most minutes one run rolls up (the next run continues from the watermark).
    telemetry_rollup_max_minutes: int = 360
    #: With no rollup yet, the first run starts this many seconds back.
    telemetry_rollup_first_s: float = 86400.0
    #: Rows of minutes older than this many seconds are deleted by the rollup (as events by prune).
    telemetry_rollup_retention_s: float = 90 * 86400.0

    def __post_init__(self) -> None:
        _positive(self, "services", ("events_prune_every_s", "events_retention_s", "events_outbox_sweep_every_s",
                                     "config_reconcile_every_s", "telemetry_export_every_s",
                                     "telemetry_rollup_every_s", "telemetry_rollup_max_minutes",
                                     "telemetry_rollup_first_s", "telemetry_rollup_retention_s"))
        if not self.events_outbox_sweep_after_s >= 0:
            raise SettingsError("services.events_outbox_sweep_after_s: must be >= 0",
                                setting="services.events_outbox_sweep_after_s")
        if not self.telemetry_rollup_settle_s >= 0:
            raise SettingsError("services.telemetry_rollup_settle_s: must be >= 0",
                                setting="services.telemetry_rollup_settle_s")
        if self.max_backoff_s is not None and not self.max_backoff_s > 0:
            raise SettingsError("services.max_backoff_s: must be > 0 (or unset)", setting="services.max_backoff_s")


@dataclass(frozen=True)
class ResilienceSettings:
    """Timeouts of every dependency call and the defaults of named circuit breakers (``fnd.breaker``)."""

    #: Consecutive failures that open a named breaker.
    breaker_failures: int = 5
    #: Seconds an open named breaker waits before one trial call.
    breaker_reset_s: float = 30.0
    #: Each failed trial doubles the wait, up to this many seconds.
    breaker_max_reset_s: float = 300.0
    #: Where named breakers keep their state: ``auto`` (Redis when one is configured, else this
    #: process), ``redis`` or ``none`` (each process its own).
    breaker_store: Literal["auto", "redis", "none"] = "auto"
    #: Prefix of the Redis keys of shared breaker state.
    breaker_key_prefix: str = "esf:breaker:"
    #: Least seconds between two ``breaker.opened`` (or ``breaker.closed``) events of one breaker.
    breaker_event_interval_s: float = 60.0
    #: Longest delay, in seconds, of a job deferred because a breaker it uses is open.
    defer_max_s: float = 30.0
    #: Redis (coordination client and Redis broker): seconds a command may wait for its answer.
    redis_timeout_s: float = 10.0
    #: Redis: seconds a connection attempt may take.
    redis_connect_timeout_s: float = 5.0
    #: Broker (Redis or RabbitMQ): seconds a connection attempt may take (kombu ``connect_timeout``).
    broker_connect_timeout_s: float = 4.0
    #: PostgreSQL event store: seconds a connection attempt may take (rounded to whole seconds).
    database_connect_timeout_s: float = 5.0
    #: PostgreSQL event store: the server cancels a statement running longer (0: never).
    database_statement_timeout_s: float = 120.0
    #: PostgreSQL event store: seconds a call on an open connection may wait for the server without an
    #: answer before the connection is closed and the call fails (0: wait until the OS drops the socket).
    #: Queries, catch-up reads, rebuilds and retention wait up to the statement timeout plus this.
    database_read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "resilience", ("breaker_failures", "breaker_reset_s", "breaker_max_reset_s", "defer_max_s",
                                       "redis_timeout_s", "redis_connect_timeout_s", "broker_connect_timeout_s",
                                       "database_connect_timeout_s"))
        _non_negative(self, "resilience", ("breaker_event_interval_s", "database_statement_timeout_s",
                                           "database_read_timeout_s"))
        if self.breaker_max_reset_s < self.breaker_reset_s:
            raise SettingsError("resilience.breaker_max_reset_s: must not be below resilience.breaker_reset_s",
                                setting="resilience.breaker_max_reset_s")


@dataclass(frozen=True)
class HealthSettings:
    """The health endpoint (``/healthz``, ``/readyz``) of ``esf worker --health-port`` and ``esf up``."""

    address: str = "127.0.0.1"
    #: Port of the endpoint (``--health-port`` wins); None: no endpoint.
    port: int | None = None
    #: ``token`` (a bearer token is required) or ``none`` (no authentication: never on a network).
    auth: Literal["token", "none"] = "token"
    #: The bearer token clients send as ``Authorization: Bearer <token>``.
    token: Secret | None = None
    #: Seconds a readiness answer is reused (the endpoint may be polled every second).
    cache_s: float = 1.0
    #: Services whose ``down`` makes the process not ready (``degraded`` is ready).
    required: tuple[str, ...] = ("broker",)
    #: A secret lease ending within this many seconds makes ``secrets`` degraded.
    secret_expiry_warn_s: float = 300.0
    #: A declared subscription whose oldest undelivered event is older than this is degraded.
    subscription_lag_s: float = 60.0

    def __post_init__(self) -> None:
        _non_negative(self, "health", ("cache_s", "secret_expiry_warn_s", "subscription_lag_s"))
        if self.port is not None and not 0 <= self.port <= 65535:
            raise SettingsError("health.port: must be between 0 and 65535", setting="health.port")


@dataclass(frozen=True)
class Settings:
    """Everything ESF needs to start. Build it with :meth:`from_env` or directly.

    ``broker_url``: ``redis://…``, ``amqp://…`` or ``None`` for the embedded
    broker (SQLite under ``data_dir``). ``database_url``: ``postgresql://…``
    or ``None`` for SQLite under ``data_dir``. ``redis_url``: the Redis used
    for locks, rate limits and delivery counters (defaults to the broker when
    the broker is Redis).
    """

    data_dir: str = ".esf"
    broker_url: str | None = None
    result_backend: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    node: str = field(default_factory=socket.gethostname)
    jobs: JobSettings = field(default_factory=JobSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    events: EventSettings = field(default_factory=EventSettings)
    config: ConfigSettings = field(default_factory=ConfigSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    flags: FlagSettings = field(default_factory=FlagSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    subscriptions: SubscriptionSettings = field(default_factory=SubscriptionSettings)
    sagas: SagaSettings = field(default_factory=SagaSettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    health: HealthSettings = field(default_factory=HealthSettings)

    #: Prefix of every environment variable.
    ENV_PREFIX: typing.ClassVar[str] = "ESF_"
    #: Environment variable naming a TOML settings file.
    ENV_FILE: typing.ClassVar[str] = "ESF_SETTINGS"
    #: Environment variables with the prefix that are not settings.
    ENV_RESERVED: typing.ClassVar[frozenset[str]] = frozenset({"ESF_SETTINGS", "ESF_APP"})
    #: Prefix of variables ESF's own test suite reads; never settings.
    ENV_TEST_PREFIX: typing.ClassVar[str] = "ESF_TEST_"

    def __post_init__(self) -> None:
        if self.broker_url is not None:
            _check_url("broker_url", self.broker_url, ("redis", "rediss", "amqp", "amqps", "pyamqp", "sqla+", "memory"))
        if self.database_url is not None:
            _check_url("database_url", self.database_url, ("postgresql", "sqlite"))
        if self.redis_url is not None:
            _check_url("redis_url", self.redis_url, ("redis", "rediss"))
        if not self.data_dir:
            raise SettingsError("data_dir: must not be empty", setting="data_dir")

    # -- derived values -------------------------------------------------

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @cached_property
    def broker_kind(self) -> BrokerKind:
        url = self.broker_url
        if url is None or url.startswith("sqla+"):
            return "embedded"
        if url.startswith("memory"):
            return "memory"
        if url.startswith(("redis", "rediss")):
            return "redis"
        return "amqp"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url
        return f"sqla+sqlite:///{self.data_path / 'broker.sqlite'}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.data_path / 'esf.sqlite'}"

    @property
    def effective_redis_url(self) -> str | None:
        if self.redis_url is not None:
            return self.redis_url
        if self.broker_kind == "redis":
            return self.broker_url
        return None

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend is not None:
            return self.result_backend
        if self.redis_url is not None:
            return self.redis_url
        if self.broker_kind == "redis":
            assert self.broker_url is not None
            return self.broker_url
        db = self.effective_database_url
        if db.startswith("postgresql://"):
            db = "postgresql+psycopg://" + db[len("postgresql://") :]
        if self.broker_kind == "embedded" and self.database_url is None:
            db = f"sqlite:///{self.data_path / 'results.sqlite'}"
        return "db+" + db

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- loading --------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``ESF_*`` variables and the TOML file named by ``ESF_SETTINGS``.

        Raises:
            SettingsError: a value is invalid, a name is unknown, or the file is unreadable.
        """
        env = dict(os.environ if environ is None else environ)
        data: dict[str, Any] = {}
        path = env.get(cls.ENV_FILE)
        if path:
            data = _read_toml(path)
        overrides = _env_overrides(cls, env)
        for key, value in overrides.items():
            if isinstance(value, dict):
                section = data.setdefault(key, {})
                if not isinstance(section, dict):
                    raise SettingsError(f"{key}: must be a table in the settings file", setting=key)
                section.update(value)
            else:
                data[key] = value
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        """Settings from a nested mapping (as read from TOML); values are converted and checked."""
        settings: Settings = _build(cls, data, "")
        return settings


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    if not isinstance(url, str) or not url.startswith(schemes):
        raise SettingsError(
            f"{name}: unsupported URL scheme in {_redact_url(url)!r}; expected one of {', '.join(schemes)}",
            setting=name,
        )


def strip_url_credentials(url: str) -> str:
    """``url`` without its user name and password (for reprs and logs)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _redact_url(url: object) -> str:
    text = str(url)
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1****@", text)


def _non_negative(obj: Any, section: str, names: tuple[str, ...]) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise SettingsError(f"{section}.{n}: must not be negative", setting=f"{section}.{n}")


def _positive(obj: Any, section: str, names: tuple[str, ...]) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise SettingsError(f"{section}.{n}: must be greater than zero", setting=f"{section}.{n}")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"ESF_SETTINGS: file {path!r} does not exist", setting="ESF_SETTINGS") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"ESF_SETTINGS: cannot read {path!r}: {exc}", setting="ESF_SETTINGS") from None


def _env_overrides(cls: type[Settings], env: Mapping[str, str]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    sections = {f.name: f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    plain = {f.name for f in dataclasses.fields(cls) if f.name not in sections}
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(cls.ENV_PREFIX) or key in cls.ENV_RESERVED or key.startswith(cls.ENV_TEST_PREFIX):
            continue
        name = key[len(cls.ENV_PREFIX) :].lower()
        if name in plain:
            out[name] = raw
            continue
        for section in sections:
            if name.startswith(section + "_"):
                sub_fields = {f.name for f in dataclasses.fields(hints[section])}
                sub = name[len(section) + 1 :]
                if sub in sub_fields:
                    out.setdefault(section, {})[sub] = raw
                    break
        else:
            raise SettingsError(f"{key}: unknown setting", setting=key)
    return out


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: must be a table", setting=prefix.rstrip("."))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingsError(
            f"{prefix}{unknown[0]}: unknown setting", setting=f"{prefix}{unknown[0]}", unknown=unknown
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: {exc}", setting=prefix.rstrip(".")) from None


def _convert(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        return _convert(non_none[0], value, name)
    if origin is Literal:
        if value not in args:
            raise SettingsError(f"{name}: {value!r} is not one of {list(args)}", setting=name)
        return value
    if origin is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise SettingsError(f"{name}: expected a list", setting=name)
        return tuple(_convert(args[0], v, name) for v in items)
    if tp is Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise SettingsError(f"{name}: expected a string", setting=name)
        return Secret(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: {value!r} is not a boolean (true/false)", setting=name)
    if tp in (int, float):
        if isinstance(value, bool):
            raise SettingsError(f"{name}: expected a number, got a boolean", setting=name)
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: {value!r} is not a valid {tp.__name__}", setting=name) from None
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{name}: expected a string, got {type(value).__name__}", setting=name)
        return value
    return value
