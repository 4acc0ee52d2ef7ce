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
