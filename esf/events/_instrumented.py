"""An event store that reports its appends to telemetry (count, latency, spool depth)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..telemetry._instruments import Instruments
    from ._contract import EventStore

log = logging.getLogger("esf.events")


class InstrumentedEventStore:
    """Wraps a store: every other attribute is the store's own."""

    def __init__(self, store: EventStore, instruments: Callable[[], Instruments]) -> None:
        self._store = store
        self._instruments = instruments

    @property
    def wrapped(self) -> EventStore:
        """The store underneath (its tier is the one services check)."""
        return self._store

    def append(self, events: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = self._store.append(events, **kwargs)
        try:
            instruments = self._instruments()
            n = len(result) if not getattr(result, "is_pending", False) else 0
            instruments.record_event_append(n, time.perf_counter() - started)
            if getattr(result, "is_pending", False):
                depth = self._store.health().get("spool_depth")
                if isinstance(depth, int):
                    instruments.record_spool_depth(depth)
        except Exception:  # telemetry never fails an append
            log.debug("could not record event append metrics", exc_info=True)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
