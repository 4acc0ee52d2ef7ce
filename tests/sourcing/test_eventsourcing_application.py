"""An application written with the ``eventsourcing`` library, unchanged, stores its events in ESF's store."""

from __future__ import annotations

from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

import esf
from esf.events import Q


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class DogSchool(Application[object]):
    pass


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'events.sqlite'}"


def test_a_library_application_persists_in_esf_and_its_events_answer_esf_queries(url: str) -> None:
    # Given the library application configured with ESF's persistence module, snapshotting on
    app = DogSchool(env={"PERSISTENCE_MODULE": "esf.plugins.eventsourcing_esf", "ESF_DATABASE_URL": url,
                         "IS_SNAPSHOTTING_ENABLED": "y"})
    store = SqlEventStore(url)
    try:
        # And an ESF-native event in the same store, before and between the application's events
        store.append(esf.Event("order.created", {"n": 1}))
        dog = Dog("Fido")
        dog.add_trick("roll over")
        app.save(dog)
        store.append(esf.Event("order.created", {"n": 2}))
        dog.add_trick("play dead")
        app.save(dog)
        app.take_snapshot(dog.id)
        # When the application reads its aggregate back
        again = app.repository.get(dog.id)
        # Then the state is whole, and so is the version-pinned history
        assert (again.name, again.tricks, again.version) == ("Fido", ["roll over", "play dead"], 3)
        assert app.repository.get(dog.id, version=2).tricks == ["roll over"]
        # And the notification log holds the application's three events only, numbered by ESF positions
        log = app.recorder.select_notifications(start=None, limit=10)
        assert [(n.id, n.originator_version) for n in log] == [(2, 1), (3, 2), (5, 3)]
        # And ESF's own queries read into the event state
        tricks = store.query(Q.data("state.trick") == "play dead")
        assert [(e.event_type, e.data["originator_version"]) for e in tricks] == [
            ("es.tests.sourcing.test_eventsourcing_application.Dog.TrickAdded", 3)]
    finally:
        store.close()
        app.close()


def test_version_ranges_are_exact_on_streams_with_gaps_in_their_versions(url: str) -> None:
    # Given a sparse sequence (as the library's snapshots are): versions 5, 10, 15, 20, and a dense one 1..6
    from esf.plugins.eventsourcing_esf import EsfFactory
    from eventsourcing.persistence import StoredEvent as EsStoredEvent

    factory = EsfFactory({"ESF_DATABASE_URL": url})
    try:
        recorder = factory.aggregate_recorder("snapshots")
        recorder.insert_events([EsStoredEvent("sparse", v, "t", b"{}") for v in (5, 10, 15, 20)])
        recorder.insert_events([EsStoredEvent("dense", v, "t", b"{}") for v in range(1, 7)])

        def versions(originator: str, **kw: int) -> list[int]:
            return [e.originator_version for e in recorder.select_events(originator, **kw)]

        # When ranges are selected, Then exactly the versions inside are returned, in order
        assert versions("sparse", gt=5) == [10, 15, 20]
        assert versions("sparse", gt=7) == [10, 15, 20]
        assert versions("sparse", gt=12) == [15, 20]
        assert versions("sparse", lte=12) == [5, 10]
        assert versions("sparse", gt=5, lte=15) == [10, 15]
        assert versions("sparse", gt=20) == []
        assert versions("dense", gt=2) == [3, 4, 5, 6]
        assert versions("dense", gt=2, lte=4) == [3, 4]
        assert versions("dense", gt=2, limit=2) == [3, 4]
        assert versions("dense", gt=9) == []
        assert versions("dense", lte=0) == []
        # And a sequence that starts at version 0 takes version 1 next (it was not new after all)
        recorder.insert_events([EsStoredEvent("zero", 0, "t", b"{}")])
        recorder.insert_events([EsStoredEvent("zero", 1, "t", b"{}")])
        assert versions("zero", gt=0) == [1]
    finally:
        factory.close()
