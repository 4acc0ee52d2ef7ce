"""The ``eventsourcing`` library's persistence on ESF's event store.

Select it with the library's own setting::

    PERSISTENCE_MODULE=esf.plugins.eventsourcing_esf
    ESF_DATABASE_URL=postgresql://…          # or sqlite:///…; else ESF's settings decide

An application's events become ESF events (one stream per aggregate,
``es.<app>.events-<id>``), so ESF's queries, correlation timeline and
subscriptions see them; its notification ids are ESF positions; its
tracking records are events of a stream per upstream application, written in
the same transaction as the events they track.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import InfrastructureFactory, TrackingRecorder
from eventsourcing.utils import Environment

from ._recorders import (
    EsfAggregateRecorder,
    EsfApplicationRecorder,
    EsfProcessRecorder,
    EsfTrackingRecorder,
    PollingSubscription,
)

__all__ = [
    "EsfAggregateRecorder",
    "EsfApplicationRecorder",
    "EsfFactory",
    "EsfProcessRecorder",
    "EsfTrackingRecorder",
    "PollingSubscription",
]


class EsfFactory(InfrastructureFactory[TrackingRecorder]):
    """Builds the library's recorders on one ESF event store (created on first use, closed by :meth:`close`).

    Environment (the library's ``Environment``, which also reads ``os.environ``):
        ESF_DATABASE_URL: the database; when absent, ``esf.Settings.from_env()`` decides.
    """

    ESF_DATABASE_URL = "ESF_DATABASE_URL"

    def __init__(self, env: Environment | Any) -> None:
        super().__init__(env)
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The ESF event store the recorders write to (SqlEventStore, no local spool)."""
        if self._store is None:
            from esf.events import create_event_store
            from esf.settings import Settings

            settings = Settings.from_env()
            url = self.env.get(self.ESF_DATABASE_URL)
            if url:
                settings = Settings.from_env({"ESF_DATABASE_URL": url, "ESF_DATA_DIR": str(settings.data_dir)})
            self._store = create_event_store(settings, spool_path=None)
        return self._store

    def _scope(self, purpose: str) -> str:
        name = (self.env.name or "app").lower()
        return f"{name}.{purpose}"

    def aggregate_recorder(self, purpose: str = "events") -> EsfAggregateRecorder:
        """An aggregate recorder of the sequence ``<application>.<purpose>`` (events or snapshots)."""
        return EsfAggregateRecorder(self.store, self._scope(purpose))

    def application_recorder(self) -> EsfApplicationRecorder:
        """The application recorder (events and notification log) of this application."""
        return EsfApplicationRecorder(self.store, self._scope("events"))

    def tracking_recorder(self, tracking_recorder_class: type[TrackingRecorder] | None = None) -> TrackingRecorder:
        """A tracking recorder (``tracking_recorder_class`` must take ``(store, scope)`` if given)."""
        cls = tracking_recorder_class or EsfTrackingRecorder
        return cls(self.store, self._scope("events"))  # type: ignore[call-arg]

    def process_recorder(self) -> EsfProcessRecorder:
        """The process recorder: events and tracking records written in one transaction."""
        return EsfProcessRecorder(self.store, self._scope("events"))

    def close(self) -> None:
        """Close the ESF event store's connections."""
        if self._store is not None:
            self._store.close()
            self._store = None
