"""Backends injected into a Foundation are used as given; a third-party backend is chosen by name, never by a
bundled one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from esf.plugins.sqlite_config import SqliteConfigStore

from esf import Foundation
from esf._plugins import load_plugin
from esf.errors import SettingsError, ValidationError
from esf.events import Event, InMemoryEventRecorder
from esf.events._contract import unwrap
from esf.jobs._coord import SqliteCoordinator
from esf.jobs._schedules import SqliteScheduleStore
from esf.settings import EventSettings, Settings, TelemetrySettings
from esf.telemetry import SQLiteSnapshotStore


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), events=EventSettings(record_job_events=False), **kwargs)


def test_injected_backends_are_the_ones_the_services_use(tmp_path: Path) -> None:
    # Given a backend of every kind, made by the caller outside the data directory
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    recorder = InMemoryEventRecorder()
    coordinator = SqliteCoordinator(elsewhere / "coord.sqlite")
    schedules = SqliteScheduleStore(elsewhere / "schedules.sqlite")
    config_store = SqliteConfigStore(str(elsewhere / "config.sqlite"))
    snapshots = SQLiteSnapshotStore(elsewhere / "telemetry.sqlite")
    settings = _settings(tmp_path, telemetry=TelemetrySettings(enabled=True))
    # When a Foundation is built with them
    with Foundation(settings, events=recorder, coordinator=coordinator, schedule_store=schedules,
                    config_store=config_store, snapshot_store=snapshots) as fnd:
        # Then every service works on the injected object
        [stored] = fnd.events.append(Event("order.created", {"n": 1}))
        assert recorder.read_all() == [stored]
        assert fnd.jobs.coordinator is coordinator
        assert fnd.jobs.schedules.store is schedules
        fnd.config.update("app.colour", "blue")
        assert config_store.read().document == {"app": {"colour": "blue"}}
        assert fnd.telemetry._store is snapshots
        # And nothing was built from the settings for them
        built = {p.name for p in (tmp_path / "data").glob("*")} if (tmp_path / "data").exists() else set()
        assert not built & {"esf.sqlite", "coord.sqlite", "schedules.sqlite", "config.sqlite", "telemetry.sqlite"}


def test_an_injected_object_that_is_not_of_its_interface_is_refused_at_construction(tmp_path: Path) -> None:
    class Half:
        def append(self, events: object) -> None: ...

    with pytest.raises(ValidationError) as info:
        Foundation(_settings(tmp_path), events=Half(), coordinator=object())  # type: ignore[arg-type]
    assert set(info.value.errors) == {"events", "coordinator"}
    assert "Half lacks get, read_stream" in info.value.errors["events"]


def _install(site: Path, dist: str, entry_points: str, module: str, source: str) -> None:
    """A distribution on ``site`` (as pip would leave it): metadata, entry points and one module."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[esf.plugins]\n{entry_points}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


RECORDER = """
    from esf.events import InMemoryEventRecorder

    class ThirdPartyRecorder(InMemoryEventRecorder):
        pass
"""


def test_a_third_party_event_store_is_chosen_by_its_own_name_in_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a package that registers events.thirdparty
    site = tmp_path / "site"
    _install(site, "esf_thirdparty", "events.thirdparty = esf_thirdparty_mod:ThirdPartyRecorder",
             "esf_thirdparty_mod", RECORDER)
    monkeypatch.syspath_prepend(str(site))
    # When the settings name it
    settings = Settings(data_dir=str(tmp_path / "data"), events=EventSettings(backend="thirdparty",
                                                                               record_job_events=False))
    with Foundation(settings) as fnd:
        fnd.events.append(Event("a.b"))
        # Then the Foundation's event store is that package's
        assert type(unwrap(fnd.events)).__name__ == "ThirdPartyRecorder"
        assert fnd.events.head() == 1


def test_a_package_registering_a_bundled_name_is_refused_naming_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a package that registers the bundled name events.sqlalchemy for its own class
    site = tmp_path / "site"
    _install(site, "esf_squatter", "events.sqlalchemy = esf_squatter_mod:ThirdPartyRecorder",
             "esf_squatter_mod", RECORDER)
    monkeypatch.syspath_prepend(str(site))
    # When the name is loaded, Then neither is: the error names both registrations
    with pytest.raises(SettingsError) as info:
        load_plugin("events.sqlalchemy", setting="events.backend")
    message = str(info.value)
    assert "registered twice" in message and "esf_squatter_mod:ThirdPartyRecorder" in message
    assert "esf.plugins.sqlalchemy_events:SqlEventStore" in message


def test_an_unknown_event_store_name_is_a_settings_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), events=EventSettings(backend="nosuch", record_job_events=False))
    with Foundation(settings) as fnd, pytest.raises(SettingsError) as info:
        _ = fnd.events
    assert "events.nosuch" in str(info.value)
