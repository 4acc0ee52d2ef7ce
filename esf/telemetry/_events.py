"""``Telemetry.event`` / ``attach`` / ``detach``, in the style of Elixir's ``:telemetry``.

Handlers run synchronously in the emitting thread, in attach order. A handler
that raises is logged and detached (as ``:telemetry`` does), so one broken
handler cannot keep failing the code that emits events.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ValidationError
from ._names import check_metric_name

log = logging.getLogger("esf.telemetry")

#: ``handler(event_name, measurements, metadata)``.
EventHandler = Callable[[str, Mapping[str, float], Mapping[str, Any]], None]

_EMPTY: Mapping[str, Any] = {}


class EventBus:
    """Prefix-matched synchronous event handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, tuple[str, EventHandler]] = {}
        self._cache: dict[str, tuple[tuple[str, EventHandler], ...]] = {}

    def attach(self, handler_id: str, event_prefix: str, handler: EventHandler) -> None:
        """Call ``handler`` for every event named ``event_prefix`` or ``event_prefix.…`` (``""``: all events).

        Raises
        ------
        ValidationError
            When ``handler_id`` is already attached, the prefix is not a valid name or ``handler`` is not callable.
        """
        if event_prefix:
            check_metric_name(event_prefix)
        if not callable(handler):
            raise ValidationError(f"attach {handler_id!r}: handler must be callable")
        with self._lock:
            if handler_id in self._handlers:
                raise ValidationError(f"attach: a handler with id {handler_id!r} is already attached; detach it first")
            self._handlers[handler_id] = (event_prefix, handler)
            self._cache = {}

    def detach(self, handler_id: str) -> bool:
        """Remove a handler. Returns whether it was attached."""
        with self._lock:
            found = self._handlers.pop(handler_id, None) is not None
            self._cache = {}
        return found

    def handlers(self) -> dict[str, str]:
        """Attached handler ids and their prefixes."""
        with self._lock:
            return {hid: prefix for hid, (prefix, _) in self._handlers.items()}

    def _resolve(self, name: str) -> tuple[tuple[str, EventHandler], ...]:
        check_metric_name(name)
        with self._lock:
            found = tuple(
                (hid, h)
                for hid, (prefix, h) in self._handlers.items()
                if not prefix or name == prefix or name.startswith(prefix + ".")
            )
            if len(self._cache) < 10_000:
                self._cache[name] = found
        return found

    def emit(self, name: str, measurements: Mapping[str, float], metadata: Mapping[str, Any] | None) -> None:
        """Validate and dispatch one event (see ``Telemetry.event``)."""
        handlers = self._cache.get(name)
        if handlers is None:
            handlers = self._resolve(name)
        if not isinstance(measurements, Mapping):
            raise ValidationError(f"event {name!r}: measurements must be a mapping of str to number")
        for key, value in measurements.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValidationError(
                    f"event {name!r}: measurement {key!r} = {value!r} is not a finite number",
                    errors={f"measurements.{key}": "not a finite number"},
                )
        if not handlers:
            return
        meta = _EMPTY if metadata is None else metadata
        for hid, handler in handlers:
            try:
                handler(name, measurements, meta)
            except Exception:
                log.exception("telemetry handler %r failed on event %r and was detached", hid, name)
                self.detach(hid)
