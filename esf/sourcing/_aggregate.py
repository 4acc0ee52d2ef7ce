"""The ``Aggregate`` base: methods record events, ``@applies`` handlers change state."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ..errors import SerializationError, ValidationError
from ..events._model import Event, freeze_json, thaw_json
from ..events._validation import EVENT_TYPE_RE, STREAM_ID_RE

__all__ = ["Aggregate", "applies"]

#: ``handler(aggregate, data)``: change the aggregate's state for one event.
Handler = Callable[[Any, Mapping[str, Any]], None]
_F = TypeVar("_F", bound=Callable[..., None])

_HANDLER_ATTR = "_esf_applies"
_PREFIX_RE = re.compile(r"(?<!^)(?=[A-Z])")


def applies(event_type: str) -> Callable[[_F], _F]:
    """Mark a method as the handler of ``event_type``: ``def on_created(self, data) -> None``.

    The handler changes state only (no I/O, no validation that may fail): it
    runs when the event is recorded and again on every load.

    Raises:
        ValidationError: ``event_type`` is not a valid event type.
    """
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
        raise ValidationError(f"{event_type!r} is not a valid event type", field="event_type")

    def mark(fn: _F) -> _F:
        setattr(fn, _HANDLER_ATTR, event_type)
        return fn

    return mark


class Aggregate:
    """A consistency boundary whose state is rebuilt from its events.

    Subclass it; write command methods that check their rules and call
    :meth:`record`, and one ``@applies("type")`` method per event type that
    changes state. Save with ``fnd.aggregates.save(agg)``; load with
    ``fnd.aggregates.load(Cls, id)``.

    Class attributes:
        stream_prefix: the stream is ``f"{stream_prefix}-{id}"`` (default: the
            class name in snake case).
        snapshot_every: write a snapshot every this many events (``None``: never).
        schema_version: the version of :meth:`snapshot_state`'s shape; bump it when
            that shape changes and older snapshots are ignored (rebuilt from events).

    Attributes:
        id: the aggregate id.
        version: the stream version of the last event applied (0: new).
    """

    stream_prefix: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    schema_version: ClassVar[int] = 1
    _handlers: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "stream_prefix" not in cls.__dict__:
            cls.stream_prefix = _PREFIX_RE.sub("_", cls.__name__).lower()
        if not STREAM_ID_RE.match(cls.stream_prefix):
            raise ValidationError(f"{cls.__name__}.stream_prefix {cls.stream_prefix!r} is not a valid stream id")
        every = cls.snapshot_every
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValidationError(f"{cls.__name__}.snapshot_every must be None or an int >= 1, not {every!r}")
        handlers: dict[str, Handler] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                event_type = getattr(value, _HANDLER_ATTR, None)
                if event_type is not None:
                    handlers[event_type] = value
        cls._handlers = handlers

    def __init__(self, id: str) -> None:
        if not isinstance(id, str) or not id:
            raise ValidationError(f"aggregate id must be a non-empty string, not {id!r}", field="id")
        self.id = id
        self.version = 0
        self._saved_version = 0
        self._pending: list[Event] = []

    @property
    def stream_id(self) -> str:
        """The event stream of this aggregate."""
        return f"{self.stream_prefix}-{self.id}"

    @property
    def pending_events(self) -> tuple[Event, ...]:
        """Events recorded since the last load or save, not yet stored."""
        return tuple(self._pending)

    def record(self, event_type: str, data: Mapping[str, Any] | None = None, *,
               correlation_id: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Record a new event: apply it to this aggregate now and keep it for :meth:`save`.

        Parameters:
            event_type: a type with an ``@applies`` handler on this class.
            data: the event's JSON object.
            correlation_id: the request this change belongs to.
            metadata: extra JSON context.

        Raises:
            ValidationError: no handler for ``event_type`` (nothing is recorded).
            SerializationError: ``data`` is not a JSON object.
        """
        handler = self._handlers.get(event_type)
        if handler is None:
            raise ValidationError(
                f"{type(self).__name__} has no @applies({event_type!r}) handler; nothing was recorded",
                field="event_type",
            )
        payload = {} if data is None else data
        if not isinstance(payload, Mapping):
            raise SerializationError(f"event data must be a JSON object, not {type(payload).__name__}")
        frozen = freeze_json(payload)
        handler(self, frozen)
        self.version += 1
        self._pending.append(Event(event_type, payload, correlation_id=correlation_id, stream_id=self.stream_id,
                                   metadata=metadata or {}))

    def apply_stored(self, event_type: str, data: Mapping[str, Any], version: int) -> None:
        """Apply an event read from the store (used when loading; unknown types are skipped).

        Parameters:
            event_type: the stored (upcast) type.
            data: the stored (upcast) data.
            version: its stream version.
        """
        handler = self._handlers.get(event_type)
        if handler is not None:
            handler(self, data)
        self.version = version
        self._saved_version = version

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot stores: by default every public attribute but ``id`` and ``version``.

        Override it (with :meth:`restore_state`) when the state is not plain JSON.
        """
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("id", "version")}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Set the state from a snapshot (the inverse of :meth:`snapshot_state`)."""
        for key, value in state.items():
            setattr(self, key, thaw_json(value))

    def _mark_saved(self) -> None:
        self._saved_version = self.version
        self._pending.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r} version={self.version}>"
