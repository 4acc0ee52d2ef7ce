"""create_event_store(settings) and the public names of esf.events."""

from __future__ import annotations

from esf.plugins.sqlalchemy_events import SqlEventStore

import esf.events
from esf.events import Event, EventStore, create_event_store
from esf.settings import EventSettings, Settings


def test_esf_events_exports_exactly_its_public_names():
    public = {n for n in vars(esf.events) if not n.startswith("_")} - {"annotations", "entry_points", "TYPE_CHECKING"}
    public -= {"Any", "MissingDependency", "ENTRY_POINT", "SPOOL_FILE"}
    assert set(esf.events.__all__) == public


def test_the_default_settings_give_a_sqlite_store_under_the_data_dir_without_a_spool(data_dir):
    store = create_event_store(Settings(data_dir=str(data_dir), node="n-1"))
    try:
        assert isinstance(store, SqlEventStore) and isinstance(store, EventStore)
        assert store.backend == "sqlite" and store.spooler is None
        assert (data_dir / "esf.sqlite").exists()
        [e] = store.append(Event("a.b"))
        assert e.node == "n-1"
    finally:
        store.close()


def test_a_postgresql_url_gives_a_postgresql_store_with_a_spool_in_the_data_dir(pg_url, data_dir):
    settings = Settings(data_dir=str(data_dir), database_url=pg_url, events=EventSettings(max_event_bytes=2048))
    store = create_event_store(settings)
    try:
        assert isinstance(store, SqlEventStore)
        assert store.backend == "postgresql" and store.url.startswith("postgresql+psycopg://")
        assert store.spooler is not None and store.spooler.spool.path == data_dir / "events-spool.sqlite"
        assert store.max_event_bytes == 2048
        assert store.health()["status"] == "ok"
    finally:
        store.close()


def test_a_store_created_while_its_database_is_down_starts_and_migrates_on_first_use(tmp_path):
    # PostgreSQL on a port where nothing listens: construction must not fail (services start in any order)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = SqlEventStore(f"postgresql://postgres@127.0.0.1:{port}/nothing", spool_path=tmp_path / "spool.sqlite")
    try:
        result = store.append(Event("a.b", {"x": 1}))
        assert result.is_pending
        assert store.health()["status"] == "degraded"
    finally:
        store.close()
