"""Invalidation bound to events (``invalidate_on``) and to configuration paths (``bind_config``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..events import Event

if TYPE_CHECKING:
    from ._facade import Namespace

__all__ = ["EventInvalidator", "InvalidatingEventStore", "InvalidationRule", "KeyOf"]

log = logging.getLogger("esf.cache")

#: The key(s) an event invalidates: a key, several, or None (nothing).
KeyOf = Callable[[Event], "str | Iterable[str] | None"]


@dataclass(frozen=True)
class InvalidationRule:
    """Events of ``event_type`` (``"order.*"``: every type under ``order.``) invalidate ``key(event)`` of
    ``namespace``, or the whole namespace when ``key`` is None."""

    event_type: str
    namespace: Namespace
    key: KeyOf | None = None

    def matches(self, event_type: str) -> bool:
        if self.event_type.endswith(".*"):
            return event_type.startswith(self.event_type[:-1])
        return event_type == self.event_type


class EventInvalidator:
    """Applies the rules to the events appended through one Foundation, after each append."""

    def __init__(self) -> None:
        self._rules: tuple[InvalidationRule, ...] = ()
        self._lock = threading.Lock()

    def add(self, rule: InvalidationRule) -> None:
        """Add ``rule``.

        Raises:
            ValidationError: an empty event type, a ``*`` anywhere but in a final ``.*``, or ``key`` not callable.
        """
        text = rule.event_type
        if not isinstance(text, str) or not text or "*" in text.removesuffix(".*"):
            raise ValidationError(f"invalidate_on: event_type {text!r} must be a type, or a prefix ending in '.*'")
        if rule.key is not None and not callable(rule.key):
            raise ValidationError("invalidate_on: key must be a function of the event")
        with self._lock:
            self._rules = (*self._rules, rule)

    @property
    def rules(self) -> tuple[InvalidationRule, ...]:
        return self._rules

    def after_append(self, events: Event | Sequence[Event]) -> None:
        """Invalidate what the appended ``events`` name. Never raises (a failing rule is logged)."""
        rules = self._rules
        if not rules:
            return
        batch = [events] if isinstance(events, Event) else events
        for event in batch:
            event_type = getattr(event, "event_type", None) or getattr(event, "type", None)
            if not isinstance(event_type, str):
                continue
            for rule in rules:
                if rule.matches(event_type):
                    _apply(rule, event)


def _apply(rule: InvalidationRule, event: Event) -> None:
    try:
        if rule.key is None:
            rule.namespace.bump()
            return
        keys = rule.key(event)
        if keys is None:
            return
        for key in [keys] if isinstance(keys, str) else list(keys):
            rule.namespace.delete(key)
    except Exception:
        log.exception("cache: invalidation rule for %r failed on an event", rule.event_type)


class InvalidatingEventStore:
    """The Foundation's event store, invalidating cache entries after each append.

    The store is built on first use (``build``), so that declaring a rule opens no database.
    Every attribute but ``append`` is the store's own.
    """

    def __init__(self, build: Callable[[], Any], invalidator: EventInvalidator) -> None:
        self._build = build
        self._store: Any = None
        self._lock = threading.Lock()
        self.invalidator = invalidator

    def _real(self) -> Any:
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._build()
                store = self._store
        return store

    def append(self, events: Any, **kwargs: Any) -> Any:
        result = self._real().append(events, **kwargs)
        self.invalidator.after_append(events)
        return result

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __getattr__(self, name: str) -> Any:
        # Not built yet: nothing to dispose of, and no reason to open the store for it.
        if name.startswith("__") or (self._store is None and name in ("engine", "after_fork")):
            raise AttributeError(name)
        return getattr(self._real(), name)
