"""Event value types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn


@dataclass(frozen=True)
class Event:
    """An event to append.

    Parameters:
        type: dotted event type, e.g. ``order.created`` (pattern ``EVENT_TYPE_RE``).
        data: JSON object (no NaN, no bytes).
        correlation_id: ties together everything done for one request.
        parent_id: the event or job that caused this one.
        stream_id: the stream (aggregate) this event belongs to; default ``"$global"``.
        event_id: UUID string; generated when absent. Appending the same id again is a no-op.
        metadata: JSON object of extra context.
    """

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    parent_id: str | None = None
    stream_id: str | None = None
    event_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: immutable, with its global position and stream version.

    ``data`` and ``metadata`` are deep-frozen on construction: mappings become
    :class:`FrozenDict` and lists :class:`FrozenList`. Both are ``dict`` and
    ``list`` subclasses, so they compare equal to plain values and
    ``json.dumps`` accepts them, but every mutating method raises ``TypeError``.
    ``recorded_at`` is timezone-aware UTC; ``monotonic_ns`` is the appending
    process's ``time.monotonic_ns()`` (comparable only within one ``node``/``pid``).
    """

    position: int
    event_id: str
    stream_id: str
    stream_version: int
    event_type: str
    recorded_at: datetime
    monotonic_ns: int
    node: str
    pid: int
    correlation_id: str | None
    parent_id: str | None
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Deep-freeze so that a returned event cannot be changed by accident;
        # already-frozen values are kept as they are (no copy).
        if not isinstance(self.data, FrozenDict):
            object.__setattr__(self, "data", freeze_json(self.data))
        if not isinstance(self.metadata, FrozenDict):
            object.__setattr__(self, "metadata", freeze_json(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``recorded_at`` as ISO 8601)."""
        return {
            "position": self.position,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_type": self.event_type,
            "recorded_at": self.recorded_at.isoformat(),
            "monotonic_ns": self.monotonic_ns,
            "node": self.node,
            "pid": self.pid,
            "correlation_id": self.correlation_id,
            "parent_id": self.parent_id,
            "data": _thaw(self.data),
            "metadata": _thaw(self.metadata),
        }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


def _immutable(self: object, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is immutable (stored event data cannot be changed)")


class FrozenDict(dict[str, Any]):
    """A ``dict`` whose mutating methods raise ``TypeError`` (JSON-serialisable, equal to plain dicts)."""

    __slots__ = ()

    __setitem__ = _immutable
    __delitem__ = _immutable
    __ior__ = _immutable  # type: ignore[assignment]
    clear = _immutable
    pop = _immutable
    popitem = _immutable
    setdefault = _immutable
    update = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self


class FrozenList(list[Any]):
    """A ``list`` whose mutating methods raise ``TypeError`` (JSON-serialisable, equal to plain lists)."""

    __slots__ = ()

    __setitem__ = _immutable
    __delitem__ = _immutable
    __iadd__ = _immutable  # type: ignore[assignment]
    __imul__ = _immutable  # type: ignore[assignment]
    append = _immutable
    extend = _immutable
    insert = _immutable
    remove = _immutable
    pop = _immutable
    clear = _immutable
    sort = _immutable
    reverse = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenList:
        return self


def thaw_json(value: Any) -> Any:
    """A mutable copy of a (frozen) JSON value: mappings become dicts, lists and tuples lists."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw_json(v) for v in value]
    return value


def freeze_json(value: Any) -> Any:
    """Deep-freeze a JSON value: mappings become :class:`FrozenDict`, lists/tuples :class:`FrozenList`."""
    kind = type(value)
    # Exact-type fast paths first: ABC isinstance checks are slow on hot paths.
    if kind is dict:
        return FrozenDict({k: v if type(v) in _SCALARS else freeze_json(v) for k, v in value.items()})
    if kind is list:
        return FrozenList([v if type(v) in _SCALARS else freeze_json(v) for v in value])
    if kind in _SCALARS:
        return value
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return FrozenList(_frozen_items(value))
    return value


_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _frozen_items(values: Iterable[Any]) -> list[Any]:
    return [freeze_json(v) for v in values]

