"""One factory per technology: ``backends_for`` decides Redis or SQLite once, and every service asks it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import esf
from esf.backends import Backends, RedisBackends, SqliteBackends, backends_for
from esf.cache import create_cache
from esf.errors import SettingsError
from esf.foundation import Foundation
from esf.settings import CacheSettings, TelemetrySettings
from esf.telemetry import create_store

ESF = Path(__file__).resolve().parents[1] / "esf"
#: The modules allowed to read the Redis URL setting: where it is defined, and the one place that picks a backend.
URL_READERS = ("settings.py", "backends/")


def test_a_redis_url_picks_redis_and_no_url_picks_sqlite_under_data_dir(data_dir: Path) -> None:
    # Given settings with a Redis URL, with a Redis broker only, and with neither
    with_url = esf.Settings(redis_url="redis://127.0.0.1:6379/9", data_dir=str(data_dir))
    with_broker = esf.Settings(broker_url="redis://127.0.0.1:6379/9", data_dir=str(data_dir))
    embedded = esf.Settings(data_dir=str(data_dir))
    # Then the first two get the Redis factory, the last the SQLite one under data_dir
    assert isinstance(backends_for(with_url), RedisBackends)
    assert isinstance(backends_for(with_broker), RedisBackends)
    sqlite = backends_for(embedded)
    assert isinstance(sqlite, SqliteBackends) and sqlite.data_dir == data_dir
    assert isinstance(sqlite, Backends) and isinstance(backends_for(with_url), Backends)


def test_a_service_setting_forces_a_technology_and_redis_without_a_url_is_refused(data_dir: Path) -> None:
    with_url = esf.Settings(redis_url="redis://127.0.0.1:6379/9", data_dir=str(data_dir))
    embedded = esf.Settings(data_dir=str(data_dir))
    assert isinstance(backends_for(with_url, technology="sqlite"), SqliteBackends)
    with pytest.raises(SettingsError) as err:
        backends_for(embedded, technology="redis", setting="telemetry.store")
    assert err.value.code == "invalid_settings" and "telemetry.store" in str(err.value)
    with pytest.raises(SettingsError, match="unknown technology 'mysql'"):
        backends_for(with_url, technology="mysql")  # type: ignore[arg-type]
    # The services' own settings reach the same decision
    forced = esf.Settings(data_dir=str(data_dir), telemetry=TelemetrySettings(store="redis"))
    with pytest.raises(SettingsError):
        create_store(forced)
    with pytest.raises(SettingsError):
        create_cache(esf.Settings(data_dir=str(data_dir), cache=CacheSettings(backend="redis")))


def test_the_redis_factory_builds_every_kind_on_redis(redis_url: str, data_dir: Path) -> None:
    settings = esf.Settings(redis_url=redis_url, data_dir=str(data_dir))
    backends = backends_for(settings)
    assert type(backends.config_store()).__name__ == "RedisConfigStore"
    assert type(backends.schedule_store()).__name__ == "RedisScheduleStore"
    assert type(backends.snapshot_store()).__name__ == "RedisSnapshotStore"
    assert type(backends.cache_tier()).__name__ == "RedisCacheTier"
    coordinator = backends.coordinator()
    try:
        assert type(coordinator).__name__ == "RedisCoordinator"
        assert coordinator.incr("backends-test", 60) == 1
        assert coordinator.incr("backends-test", 60) == 2
    finally:
        coordinator.close()
    assert list(data_dir.iterdir()) == []  # nothing went to SQLite


def test_the_sqlite_factory_builds_every_kind_under_data_dir(data_dir: Path) -> None:
    backends = backends_for(esf.Settings(data_dir=str(data_dir)))
    assert type(backends.config_store()).__name__ == "SqliteConfigStore"
    assert type(backends.schedule_store()).__name__ == "SqliteScheduleStore"
    assert type(backends.snapshot_store()).__name__ == "SQLiteSnapshotStore"
    assert backends.cache_tier() is None
    coordinator = backends.coordinator()
    try:
        assert coordinator.incr("backends-test", 60) == 1
    finally:
        coordinator.close()
    assert (data_dir / "coord.sqlite").exists()


def test_the_foundations_services_take_their_backends_from_its_factory(redis_url: str, data_dir: Path) -> None:
    # Given a Foundation on Redis
    with Foundation(esf.Settings(redis_url=redis_url, data_dir=str(data_dir))) as fnd:
        assert isinstance(fnd.backends, RedisBackends)
        # Then the coordinator shares the Foundation's client, and the schedules are on Redis too
        assert type(fnd.jobs.coordinator).__name__ == "RedisCoordinator"
        assert fnd.backends.client() is fnd.redis
        assert type(fnd.jobs.schedules.store).__name__ == "RedisScheduleStore"
    # Given an embedded Foundation; Then they are SQLite files under data_dir
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        assert isinstance(fnd.backends, SqliteBackends)
        assert type(fnd.jobs.coordinator).__name__ == "SqliteCoordinator"
        assert type(fnd.jobs.schedules.store).__name__ == "SqliteScheduleStore"


def url_readers() -> list[str]:
    found = []
    for path in sorted(ESF.rglob("*.py")):
        rel = path.relative_to(ESF).as_posix()
        if rel.startswith(URL_READERS):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\beffective_redis_url\b", line):
                found.append(f"esf/{rel}:{n}: {line.strip()}")
    return found


def test_no_module_but_the_backends_factory_reads_the_redis_url_to_pick_a_backend() -> None:
    # Given every module of esf/; Then only settings.py (which defines it) and esf/backends/ read effective_redis_url
    assert url_readers() == []
