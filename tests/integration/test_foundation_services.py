"""The Foundation's services work together: audit events, job metrics, health."""

from __future__ import annotations

from pathlib import Path

import esf
from esf.foundation import Foundation
from tests.jobs.harness import wait_for


def test_a_config_change_is_an_audit_event_in_the_store_without_blocking_the_update(tmp_path: Path) -> None:
    # Given an embedded Foundation (SQLite everywhere)
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        # When configuration changes
        version = fnd.config.update_batch({"billing.retries": 7, "billing.enabled": True}, actor="ops")
        # Then the snapshot has it at once, and the audit event reaches the store
        assert fnd.config.get("billing.retries") == 7
        events = wait_for(lambda: fnd.events.query(esf.Q.type("config.updated")), timeout=30,
                          message="config.updated event")
        assert any(e.data.get("version") == version for e in events)


def test_health_reports_every_started_service(tmp_path: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        fnd.config.get()
        fnd.events.head()
        fnd.telemetry.counter("demo.hits").inc()
        report = fnd.health()
        assert set(report["services"]) >= {"broker", "events", "config", "telemetry"}
        assert report["status"] in ("ok", "degraded")


def test_recording_an_invalid_event_fails_at_the_call_site(tmp_path: Path) -> None:
    import pytest

    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd, pytest.raises(esf.ValidationError):
        fnd.record(esf.Event("not a type!", {}))


def test_flush_hands_recorded_events_to_the_store_before_it_returns(tmp_path: Path) -> None:
    # Given an embedded Foundation that records events in the background
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        for i in range(5):
            fnd.record(esf.Event("order.noted", {"n": i}, stream_id="flushed"))
        # When it is flushed
        assert fnd.flush(timeout=30)
        # Then every recorded event is stored, without waiting for the writer's linger
        assert [e.data["n"] for e in fnd.events.read_stream("flushed")] == [0, 1, 2, 3, 4]


def test_appends_config_changes_and_dead_letters_show_in_telemetry(tmp_path: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        fnd.events.append([esf.Event("order.created", {"n": i}) for i in range(3)])
        fnd.config.update("billing.retries", 3)
        report = fnd.health()
        assert report["services"]["dlq"]["total"] == 0
        snap = fnd.telemetry.snapshot(cluster=False)
        text = repr(snap)
        assert "esf.events.appended" in text
        assert "esf.config.updates" in text
        assert "esf.dlq.depth" in text


def test_exporters_follow_the_configuration_service_at_run_time(tmp_path: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(tmp_path))) as fnd:
        fnd.telemetry.counter("demo.hits").inc()
        assert "telemetry.log" not in fnd.telemetry.health()["exporters"]
        # When the configuration enables the log exporter
        fnd.config.update("telemetry.exporters", {"log": {}})
        # Then telemetry runs it, and disabling it in configuration stops it
        wait_for(lambda: "telemetry.log" in fnd.telemetry.health()["exporters"], timeout=10,
                 message="log exporter enabled")
        fnd.config.update("telemetry.exporters", {})
        wait_for(lambda: "telemetry.log" not in fnd.telemetry.health()["exporters"], timeout=10,
                 message="log exporter disabled")
