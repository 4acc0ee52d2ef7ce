"""An event store whose read paths return upcast events and whose appends record schema versions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..events._model import Event

if TYPE_CHECKING:
    from ..events import EventStore, Page, StoredEvent
    from ._upcasting import Upcasters


class UpcastingEventStore:
    """Wraps a store: reads go through :meth:`Upcasters.upcast`, appends through :meth:`Upcasters.stamp`.

    Every other attribute is the wrapped store's own. Queries filter on the
    stored shape (the database never sees the upcast one); their results are
    upcast. With no upcaster registered every call passes straight through.
    """

    def __init__(self, store: EventStore, upcasters: Upcasters) -> None:
        self._store = store
        self._upcasters = upcasters

    @property
    def wrapped(self) -> EventStore:
        """The store underneath (its reads return the stored shapes)."""
        return self._store

    def append(self, events: Event | Sequence[Event], **kwargs: Any) -> Any:
        if not self._upcasters.empty:
            stamp = self._upcasters.stamp
            events = stamp(events) if isinstance(events, Event) else [stamp(e) for e in events]
        return self._store.append(events, **kwargs)

    def _up(self, events: list[StoredEvent]) -> list[StoredEvent]:
        return events if self._upcasters.empty else self._upcasters.upcast_many(events)

    def get(self, event_id: str) -> StoredEvent:
        return self._upcasters.upcast(self._store.get(event_id))

    def get_many(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        return self._up(self._store.get_many(event_ids))

    def read_stream(self, stream_id: str, **kwargs: Any) -> list[StoredEvent]:
        return self._up(self._store.read_stream(stream_id, **kwargs))

    def read_all(self, **kwargs: Any) -> list[StoredEvent]:
        return self._up(self._store.read_all(**kwargs))

    def read_correlation(self, correlation_id: str, **kwargs: Any) -> list[StoredEvent]:
        return self._up(self._store.read_correlation(correlation_id, **kwargs))

    def query(self, query: Any = None) -> list[StoredEvent]:
        return self._up(self._store.query(query))

    def query_page(self, query: Any = None, limit: int = 100, cursor: str | None = None) -> Page:
        page = self._store.query_page(query, limit, cursor)
        if self._upcasters.empty:
            return page
        return dataclasses.replace(page, events=tuple(self._upcasters.upcast_many(page.events)))

    def followed_by(self, first: Any, then: Any, **kwargs: Any) -> list[tuple[StoredEvent, StoredEvent]]:
        pairs = self._store.followed_by(first, then, **kwargs)
        up = self._upcasters.upcast
        return pairs if self._upcasters.empty else [(up(a), up(b)) for a, b in pairs]

    def not_followed_by(self, first: Any, then: Any, **kwargs: Any) -> list[StoredEvent]:
        return self._up(self._store.not_followed_by(first, then, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
