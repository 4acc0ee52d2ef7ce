"""Instrumentation for free (job hooks, service helpers), job SLOs from events, and the CLI."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from esf.cli import build_parser
from esf.cli._metrics import show_job_slos, show_snapshot
from esf.errors import Retry, SkipJob, ValidationError
from esf.hooks import JobContext
from esf.resilience import CircuitBreaker
from esf.settings import Settings
from esf.telemetry import Telemetry, TelemetryHooks, create_telemetry, iter_job_events, job_slos


@pytest.fixture
def tel():
    t = Telemetry(store=None)
    yield t
    t.close()


def values(tel, name):
    snap = tel.snapshot(cluster=False)
    return {(s["labels"].get("job"), s["labels"].get("queue")): s for s in snap["metrics"][name]["series"]}


def test_job_hooks_count_every_step_and_time_runs_and_queue_waits(tel):
    hooks = TelemetryHooks(lambda: tel)  # deferred, as the Foundation registers it
    ctx = JobContext("j1", "charge", "billing", enqueued_at=100.0, started_at=100.25)
    # Given a job that is enqueued, fails once (retried), then succeeds, and one that is skipped
    hooks.after_enqueue(ctx)
    hooks.before_process(ctx)
    hooks.after_process(ctx, exc=ValueError("x"), runtime_s=0.5)
    hooks.after_retry(ctx, exc=ValueError("x"), delay_s=2)
    hooks.before_process(ctx)
    hooks.after_process(ctx, runtime_s=0.25)
    hooks.after_process(ctx, exc=SkipJob("no-op"), runtime_s=0.0)
    hooks.after_process(ctx, exc=Retry(), runtime_s=0.1)

    @dataclass
    class Entry:  # the attributes of esf.jobs.DeadLetter that the hooks read
        job: str = "charge"
        queue: str = "billing"

    hooks.after_dead_letter(Entry())
    hooks.after_replay(Entry(), job_id="j2")
    key = ("charge", "billing")
    # Then each counter has its count, labelled by job and queue
    for name, expected in [
        ("esf.jobs.enqueued", 1), ("esf.jobs.started", 2), ("esf.jobs.failed", 1), ("esf.jobs.retried", 1),
        ("esf.jobs.succeeded", 2), ("esf.jobs.dead_lettered", 1), ("esf.jobs.replayed", 1),
    ]:
        assert values(tel, name)[key]["value"] == expected, name
    assert values(tel, "esf.jobs.runtime_seconds")[key]["count"] == 4
    wait = values(tel, "esf.jobs.queue_wait_seconds")[key]
    assert wait["count"] == 2
    assert wait["p50"] == pytest.approx(0.25, rel=0.05)


def test_service_helpers_record_under_the_documented_names(tel):
    ins = tel.instruments
    ins.record_event_append(3, 0.002)
    ins.record_spool_depth(7)
    ins.record_config_update(12, 0.04)
    ins.set_dlq_depth("billing", 4)
    ins.record_cache("users", hit=True)
    ins.record_cache("users", hit=False)
    ins.record_flag("new_checkout", "on", "rollout")
    breaker = CircuitBreaker("db", failure_threshold=1, on_state_change=ins.record_breaker_state)
    breaker.record_failure()
    m = tel.snapshot(cluster=False)["metrics"]
    assert m["esf.events.appended"]["series"][0]["value"] == 3
    assert m["esf.events.spool_depth"]["series"][0]["value"] == 7
    assert m["esf.config.version"]["series"][0]["value"] == 12
    assert m["esf.dlq.depth"]["series"][0] == {"labels": {"queue": "billing"}, "value": 4}
    assert m["esf.cache.hits"]["series"][0]["value"] == 1
    assert m["esf.flags.evaluations"]["series"][0]["labels"] == {"flag": "new_checkout", "variant": "on",
                                                                     "reason": "rollout"}
    assert m["esf.breaker.state"]["series"][0] == {"labels": {"breaker": "db"}, "value": 1}
    # Shared-state gauges merge with max across processes
    assert tel.rules.for_name("esf.dlq.depth").gauge_merge == "max"


@dataclass
class Row:
    position: int
    event_type: str
    data: dict[str, Any]
    correlation_id: str | None = None
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def job_rows(now: float, n: int = 400, seed: int = 3) -> list[Row]:
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        job = "charge" if i % 2 else "email"
        at = now - rng.uniform(30, 600)
        runtime = rng.lognormvariate(-2, 0.8)
        wait = rng.expovariate(5)
        cid = f"c-{i}"
        base = {"job": job, "queue": "q", "attempt": 1, "job_id": f"j{i}"}
        rows.append(Row(len(rows) + 1, "job.started", {**base, "at": at, "started_at": at, "wait_s": wait}, cid))
        etype = "job.failed" if i % 10 == 0 else "job.succeeded"
        rows.append(Row(len(rows) + 1, etype, {**base, "at": at + runtime, "runtime_s": runtime}, cid))
    # Old events, outside a 15-minute window, and unrelated ones
    rows.append(Row(len(rows) + 1, "job.succeeded", {"job": "charge", "at": now - 3600, "runtime_s": 99.0}, "old"))
    rows.append(Row(len(rows) + 1, "order.created", {"at": now}, "x"))
    return rows


def test_job_slos_are_exact_percentiles_over_the_window_with_slow_exemplars():
    now = 1_800_000_000.0
    rows = job_rows(now)
    result = job_slos(rows, timedelta(minutes=15), now=now)
    charge = result["jobs"]["charge"]
    runtimes = sorted(r.data["runtime_s"] for r in rows[:-2] if r.event_type != "job.started"
                      and r.data["job"] == "charge")
    assert charge["runtime_s"]["count"] == 200 == charge["succeeded"] + charge["failed"]
    assert charge["runtime_s"]["p50"] == runtimes[int(0.5 * 199)]
    assert charge["runtime_s"]["p99"] == runtimes[int(0.99 * 199)]
    assert charge["runtime_s"]["max"] == runtimes[-1] != 99.0
    assert charge["queue_wait_s"]["count"] == 200
    # The slowest bucket links to the correlation ids of its slowest runs
    slowest = charge["slow"][0]
    by_cid = {r.correlation_id: r.data["runtime_s"] for r in rows[:-2] if r.event_type != "job.started"}
    assert 1 <= len(slowest["correlation_ids"]) <= 5
    assert by_cid[slowest["correlation_ids"][0]] == runtimes[-1]
    assert sum(b["count"] for b in charge["slow"]) == sum(1 for r in runtimes if r >= runtimes[int(0.9 * 199)])
    with pytest.raises(ValidationError):
        job_slos(rows, timedelta(0))


class ListEventStore:
    """The read side of an event store over a list (the real store's contract: head/read_all)."""

    def __init__(self, rows):
        self.rows = rows
        self.reads = 0

    def head(self):
        return len(self.rows)

    def read_all(self, *, after_position=0, limit=1000):
        self.reads += 1
        return self.rows[after_position:after_position + limit]


def test_job_events_are_read_from_the_window_start_without_reading_the_whole_store():
    now = 1_800_000_000.0
    rows = [Row(i + 1, "job.succeeded", {"job": "a", "at": now - 86400 + i * 8.64, "runtime_s": 1.0})
            for i in range(10_000)]
    store = ListEventStore(rows)
    got = list(iter_job_events(store, now - 900, page=100))
    assert got[-1] is rows[-1]
    assert all(r.data["at"] >= now - 900 - 300 - 8.64 for r in got)
    assert len(got) < 300 and store.reads < 30


def test_esf_metrics_prints_the_snapshot_as_a_table_and_as_json(tel, capsys):
    tel.counter("shop.orders", {"region": "eu"}).inc(2)
    tel.histogram("shop.seconds").observe(0.5)
    assert show_snapshot(tel, prefix="shop.", cluster=False) == 0
    out = capsys.readouterr().out
    assert "shop.orders{region=eu}" in out and "count=1" in out
    assert show_snapshot(tel, prefix="shop.", as_json=True, cluster=False) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"]["shop.orders"]["series"][0]["value"] == 2
    assert set(data["metrics"]) == {"shop.orders", "shop.seconds"}


def test_esf_metrics_jobs_prints_slos(capsys):
    now = 1_800_000_000.0
    assert show_job_slos(job_rows(now), timedelta(minutes=15), now=now, job="email", as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["jobs"]) == ["email"]
    assert show_job_slos(job_rows(now), timedelta(minutes=15), now=now) == 0
    assert "slow" in capsys.readouterr().out


def test_the_cli_parses_the_metrics_commands():
    parser = build_parser()
    args = parser.parse_args(["metrics", "--json", "--prefix", "esf.jobs"])
    assert args.handler.__name__ == "_metrics" and args.json and args.prefix == "esf.jobs"
    args = parser.parse_args(["metrics", "jobs", "--window", "15m"])
    assert args.handler.__name__ == "_jobs" and args.window == "15m"
    assert not args.exact
    assert parser.parse_args(["metrics", "jobs", "--window", "1d", "--exact"]).exact


def test_create_telemetry_uses_sqlite_under_data_dir_without_redis(data_dir):
    settings = Settings(data_dir=str(data_dir))
    t = create_telemetry(settings, node_id="n1")
    try:
        t.counter("a.b").inc()
        assert t.snapshot()["scope"] == "cluster"
        assert (data_dir / "telemetry.sqlite3").exists()
        assert t.proc_id.startswith("n1:")
    finally:
        t.close()


def test_create_telemetry_uses_redis_when_given(redis_url):
    t = create_telemetry(Settings(), redis_url=redis_url)
    try:
        t.counter("a.b").inc(5)
        assert t.snapshot()["metrics"]["a.b"]["series"][0]["value"] == 5
        assert type(t._store).__name__ == "RedisSnapshotStore"
    finally:
        t.close()


def test_create_telemetry_refuses_prometheus_without_credentials(data_dir):
    settings = Settings.from_mapping({"data_dir": str(data_dir), "telemetry": {"exporters": ["prometheus"],
                                                                               "prometheus_port": 0}})
    with pytest.raises(ValidationError, match="basic auth is required"):
        create_telemetry(settings)


def test_configuration_can_enable_prometheus_with_the_credentials_from_settings(data_dir):
    # Given settings holding the credentials, and no exporter enabled at start
    settings = Settings.from_mapping({
        "data_dir": str(data_dir),
        "telemetry": {"store": "none", "prometheus_port": 0, "prometheus_user": "prom",
                      "prometheus_password": "pw-123"},
    })
    t = create_telemetry(settings)
    try:
        # When the configuration service enables it without credentials
        t.apply_config({"telemetry.exporters": {"prometheus": {"enabled": True}}})
        # Then it runs with the settings' credentials
        exporter = t.exporter("prometheus")
        assert exporter is not None and exporter.port > 0
        assert "pw-123" not in repr(t._exporters.runners["telemetry.prometheus"].options)
    finally:
        t.close()
