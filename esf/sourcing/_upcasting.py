"""Upcasters: turn the stored shape of an old event into the current one, on every read."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import SerializationError, ValidationError
from ..events._model import Event, StoredEvent, thaw_json
from ..events._validation import EVENT_TYPE_RE

#: Metadata key holding the schema version an event was written with (absent: version 1).
SCHEMA_VERSION_KEY = "schema_version"

#: ``upcaster(data) -> data``: the data of version ``n`` turned into the data of version ``n + 1``.
UpcasterFn = Callable[[dict[str, Any]], Mapping[str, Any]]


class Upcasters:
    """A registry of upcaster chains, one per event type.

    An event type with no upcaster is at schema version 1. Registering the
    upcaster ``from_version=n`` makes ``n + 1`` the current version of that
    type; chains are registered in order (1, then 2, …) so that every stored
    version has a path to the current one. Thread-safe: registration takes a
    lock, reads use an immutable snapshot of the chains.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chains: dict[str, tuple[UpcasterFn, ...]] = {}

    def register(self, event_type: str, from_version: int, fn: UpcasterFn) -> None:
        """Add the upcaster of ``event_type`` from ``from_version`` to ``from_version + 1``.

        Parameters:
            event_type: the event type (pattern ``EVENT_TYPE_RE``).
            from_version: the schema version ``fn`` reads (1 for the first upcaster).
            fn: a function of the old ``data`` dict returning the new one (a JSON object).

        Raises:
            ValidationError: bad type or version, or ``from_version`` is not the
                type's current version (chains are registered in order, once).
        """
        if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
            raise ValidationError(f"upcaster event type {event_type!r} is not a valid event type", field="event_type")
        if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 1:
            raise ValidationError(f"from_version must be an int >= 1, not {from_version!r}", field="from_version")
        if not callable(fn):
            raise ValidationError("an upcaster must be callable", field="fn")
        with self._lock:
            chain = self._chains.get(event_type, ())
            current = len(chain) + 1
            if from_version != current:
                raise ValidationError(
                    f"{event_type}: the next upcaster must read version {current} (the current one),"
                    f" not {from_version}; register each version once, in order",
                    field="from_version", expected=current, actual=from_version,
                )
            chains = dict(self._chains)
            chains[event_type] = (*chain, fn)
            self._chains = chains

    def current_version(self, event_type: str) -> int:
        """The schema version events of ``event_type`` are written with (1 + its number of upcasters)."""
        return len(self._chains.get(event_type, ())) + 1

    def stamp(self, event: Event) -> Event:
        """``event`` with ``metadata["schema_version"]`` set to its type's current version.

        Events of types without upcasters are returned as they are (version 1 is implied).
        """
        chain = self._chains.get(event.type)
        if not chain or SCHEMA_VERSION_KEY in event.metadata:
            return event
        return dataclasses.replace(event, metadata={**event.metadata, SCHEMA_VERSION_KEY: len(chain) + 1})

    def upcast(self, event: StoredEvent) -> StoredEvent:
        """``event`` in its type's current shape (itself when it already is). The store is never rewritten.

        Raises:
            ValidationError: the stored schema version is newer than the registry's
                (a reader older than the writer) or not an int.
            SerializationError: an upcaster did not return a JSON object.
        """
        chain = self._chains.get(event.event_type)
        if not chain:
            return event
        stored = event.metadata.get(SCHEMA_VERSION_KEY, 1)
        current = len(chain) + 1
        if stored == current:
            return event
        if not isinstance(stored, int) or isinstance(stored, bool) or stored < 1 or stored > current:
            raise ValidationError(
                f"event {event.event_id} ({event.event_type}) has schema version {stored!r};"
                f" this process knows versions 1..{current}",
                field=SCHEMA_VERSION_KEY, event_id=event.event_id,
            )
        data: dict[str, Any] = thaw_json(event.data)
        for version in range(stored, current):
            new = chain[version - 1](data)
            if not isinstance(new, Mapping):
                raise SerializationError(
                    f"the upcaster of {event.event_type} from version {version} returned"
                    f" {type(new).__name__}, not a JSON object",
                )
            data = dict(new)
        return dataclasses.replace(event, data=data, metadata={**event.metadata, SCHEMA_VERSION_KEY: current})

    def upcast_many(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """:meth:`upcast` of each event (the same list object's items when nothing is registered)."""
        if not self._chains:
            return list(events)
        return [self.upcast(e) for e in events]

    @property
    def empty(self) -> bool:
        """True while no upcaster is registered (reads and appends then pass through untouched)."""
        return not self._chains
