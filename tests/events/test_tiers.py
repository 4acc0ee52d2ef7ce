"""The event store's capability tiers: each backend declares what it implements, services check what they need."""

from __future__ import annotations

from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf import Foundation
from esf.errors import UnsupportedCapability
from esf.events import (
    Event,
    EventRecorder,
    InMemoryEventRecorder,
    QueryableEventStore,
    TransactionalEventStore,
    require_capability,
)
from esf.settings import EventSettings, Settings


def _memory_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path), events=EventSettings(backend="memory", record_job_events=False))


def test_the_in_memory_recorder_is_the_base_tier_only() -> None:
    recorder = InMemoryEventRecorder()
    assert isinstance(recorder, EventRecorder)
    assert not isinstance(recorder, QueryableEventStore)
    assert not isinstance(recorder, TransactionalEventStore)


def test_the_sql_store_implements_every_tier(tmp_path: Path) -> None:
    store = SqlEventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", node="t")
    try:
        for tier in (EventRecorder, QueryableEventStore, TransactionalEventStore):
            assert isinstance(store, tier)
            require_capability(store, tier, needed_for="a test")
    finally:
        store.close()


def test_a_too_small_backend_is_refused_with_the_missing_tier_named() -> None:
    # Given a bare recorder
    recorder = InMemoryEventRecorder()
    # When a caller needs queries
    with pytest.raises(UnsupportedCapability) as info:
        require_capability(recorder, QueryableEventStore, needed_for="the timeline")
    # Then the error names the tier, the backend and what was asked for, with a stable code
    assert info.value.code == "unsupported_capability"
    assert info.value.capability == "QueryableEventStore" and info.value.backend == "InMemoryEventRecorder"
    assert "the timeline" in str(info.value)


def test_settings_select_the_memory_backend_and_services_refuse_what_it_lacks(tmp_path: Path) -> None:
    # Given a Foundation whose event store is the in-memory recorder, behind ESF's own wrappers
    with Foundation(_memory_settings(tmp_path)) as fnd:
        stored = fnd.events.append(Event("order.created", {"n": 1}, stream_id="order-1"))
        assert fnd.events.read_stream("order-1") == stored
        # (the upcasting wrapper has a ``query`` method of its own: the backend underneath is what counts)
        assert hasattr(fnd.events, "query")
        # When a service needs the idempotency ledger, Then it fails clearly before touching anything
        with pytest.raises(UnsupportedCapability) as info:
            fnd.jobs.once("charge:1")
        assert info.value.capability == "TransactionalEventStore"
        # And a query is refused too, where a service needs one
        with pytest.raises(UnsupportedCapability):
            require_capability(fnd.events, QueryableEventStore, needed_for="a query")
        assert fnd.events.head() == 1


def test_the_timeline_and_the_maintenance_commands_refuse_a_bare_recorder() -> None:
    from esf.cli._events import run_prune, run_spool_list
    from esf.events import timeline

    recorder = InMemoryEventRecorder()
    with pytest.raises(UnsupportedCapability) as info:
        timeline(recorder, "c-1")
    assert info.value.capability == "QueryableEventStore"
    for command in (lambda: run_prune(recorder, "1d"), lambda: run_spool_list(recorder)):
        with pytest.raises(UnsupportedCapability) as info:
            command()
        assert info.value.capability == "TransactionalEventStore"


def test_an_empty_backend_name_is_refused_and_the_environment_selects_one() -> None:
    from esf.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        EventSettings(backend="")
    assert info.value.details["setting"] == "events.backend"
    assert Settings.from_env({"ESF_EVENTS_BACKEND": "memory"}).events.backend == "memory"
