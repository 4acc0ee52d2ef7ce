"""The event query language: filters are values, never strings.

``Q`` builds immutable :class:`Filter` trees; ``&``, ``|`` and ``~`` combine
them. A backend compiles a tree to SQL with bound parameters only (see
``esf.plugins.sqlalchemy_events._query_sql``); :meth:`Filter.matches` is the
reference semantics in plain Python, which every backend must agree with.

Everything a caller passes is checked when the filter is *built*: a bad path,
value or operator raises :class:`esf.errors.QueryError` before any SQL runs.

Field paths (``Q.data("user.id")``) are dot-separated segments into the
event's ``data`` object. A segment is a key matching ``KEY_SEGMENT_RE``
(``^[A-Za-z_][A-Za-z0-9_]{0,63}$``) or a non-negative array index matching
``INDEX_SEGMENT_RE`` (``items.0.sku``); at most ``MAX_PATH_DEPTH`` segments.
A key segment only descends into objects and an index only into arrays.

Comparison rules (identical on every backend):

- ``==`` matches when the field holds the same JSON type and an equal value:
  numbers compare as numbers (``1 == 1.0``), strings by code point, booleans
  only equal booleans (``true`` is not ``1``) and ``None`` matches JSON
  ``null`` only (a missing field is not ``null``; use ``~f.exists()``).
- ``!=`` is exactly ``~(f == v)``: it also matches events where the field is
  missing or holds another type.
- ``<``, ``<=``, ``>``, ``>=`` take a number or a string and match only fields
  of the same JSON type (numbers numerically, strings by Unicode code point,
  i.e. binary UTF-8 order, independent of any database collation).
- ``in_(values)`` is the ``or`` of ``==`` over the values (empty: no match).
- ``exists()`` matches when the path resolves, including to ``null``.
- ``contains(v)``: when the field is a string and ``v`` a string, ``v`` is a
  substring (case-sensitive); when the field is an array, one element is
  ``== v`` (elements that are objects or arrays never match). Nothing else.

Values are JSON scalars: ``str`` (no NUL character, at most
``MAX_STRING_CHARS``), ``int`` (64-bit signed), finite ``float``, ``bool``,
``None``. Time filters take timezone-aware datetimes (``recorded_at`` is UTC;
``between`` is half-open, ``start <= t < end``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._query_values import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_NODES,
    MAX_ID_CHARS,
    MAX_IN_VALUES,
    MISSING,
    CompareOp,
    Order,
    Path,
    Per,
    Scalar,
    check_datetime,
    check_limit,
    check_position,
    check_scalar,
    check_text,
    fail,
    json_equal,
    json_kind,
    parse_path,
    resolve,
)

if TYPE_CHECKING:
    from ._model import StoredEvent

__all__ = [
    "And",
    "CorrelationIs",
    "Field",
    "FieldCompare",
    "FieldContains",
    "FieldExists",
    "FieldIn",
    "Filter",
    "Not",
    "Or",
    "Page",
    "PositionAfter",
    "Q",
    "Query",
    "StreamIs",
    "TimeBetween",
    "TypeIs",
]

# ---------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filter:
    """Base of every filter node: combine with ``&``, ``|`` and ``~``."""

    def __and__(self, other: Filter) -> Filter:
        return And(_flatten(And, self, other))

    def __or__(self, other: Filter) -> Filter:
        return Or(_flatten(Or, self, other))

    def __invert__(self) -> Filter:
        if isinstance(self, Not):
            return self.part
        return Not(self)

    def __bool__(self) -> bool:
        fail("a filter has no truth value: combine filters with & | ~, not 'and', 'or', 'not'", "filter")

    def matches(self, event: StoredEvent) -> bool:
        """The reference semantics: does ``event`` match? (Backends must agree.)"""
        raise NotImplementedError

    def query(
        self,
        *,
        order: Order = "asc",
        limit: int | None = None,
        after: int | None = None,
        before: int | None = None,
    ) -> Query:
        """A :class:`Query` over this filter."""
        return Query(self, order=order, limit=limit, after=after, before=before)


def _flatten(kind: type[And] | type[Or], left: object, right: object) -> tuple[Filter, ...]:
    parts: list[Filter] = []
    for side in (left, right):
        if not isinstance(side, Filter):
            fail(f"can only combine filters, not {type(side).__name__}", "filter")
        parts.extend(side.parts if isinstance(side, kind) else (side,))
    return tuple(parts)


def _measure(node: Filter) -> tuple[int, int]:
    """(nodes, depth) of a tree whose sub-trees were already checked when built."""
    children: tuple[Filter, ...] = ()
    if isinstance(node, And | Or):
        children = node.parts
    elif isinstance(node, Not):
        children = (node.part,)
    sizes = [_measure(c) for c in children]
    return 1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0)


def _check_size(parts: tuple[Filter, ...]) -> None:
    for part in parts:
        if not isinstance(part, Filter):
            fail(f"can only combine filters, not {type(part).__name__}", "filter")
    sizes = [_measure(p) for p in parts]
    if 1 + sum(n for n, _ in sizes) > MAX_FILTER_NODES:
        fail(f"a filter has at most {MAX_FILTER_NODES} nodes", "filter")
    if 1 + max((d for _, d in sizes), default=0) > MAX_FILTER_DEPTH:
        fail(f"filters nest at most {MAX_FILTER_DEPTH} levels deep", "filter")


@dataclass(frozen=True)
class And(Filter):
    """Every part matches."""

    parts: tuple[Filter, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        _check_size(self.parts)

    def matches(self, event: StoredEvent) -> bool:
        return all(p.matches(event) for p in self.parts)


@dataclass(frozen=True)
class Or(Filter):
    """At least one part matches."""

    parts: tuple[Filter, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        _check_size(self.parts)

    def matches(self, event: StoredEvent) -> bool:
        return any(p.matches(event) for p in self.parts)


@dataclass(frozen=True)
class Not(Filter):
    """The part does not match (two-valued: a missing field is simply "no match")."""

    part: Filter

    def __post_init__(self) -> None:
        _check_size((self.part,))

    def matches(self, event: StoredEvent) -> bool:
        return not self.part.matches(event)


@dataclass(frozen=True)
class TypeIs(Filter):
    """``event_type`` is one of ``types``."""

    types: tuple[str, ...]

    def matches(self, event: StoredEvent) -> bool:
        return event.event_type in self.types


@dataclass(frozen=True)
class StreamIs(Filter):
    """``stream_id`` equals ``stream_id``."""

    stream_id: str

    def matches(self, event: StoredEvent) -> bool:
        return event.stream_id == self.stream_id


@dataclass(frozen=True)
class CorrelationIs(Filter):
    """``correlation_id`` equals ``correlation_id``."""

    correlation_id: str

    def matches(self, event: StoredEvent) -> bool:
        return event.correlation_id == self.correlation_id


@dataclass(frozen=True)
class TimeBetween(Filter):
    """``start <= recorded_at < end`` (UTC; either bound may be open)."""

    start: datetime | None
    end: datetime | None

    def matches(self, event: StoredEvent) -> bool:
        t = event.recorded_at.astimezone(UTC)
        return (self.start is None or self.start <= t) and (self.end is None or t < self.end)


@dataclass(frozen=True)
class PositionAfter(Filter):
    """``position > position``."""

    position: int

    def matches(self, event: StoredEvent) -> bool:
        return event.position > self.position


@dataclass(frozen=True)
class FieldCompare(Filter):
    """``data.<path> <op> value`` with the typed rules of the module docstring."""

    path: Path
    op: CompareOp
    value: Scalar

    def matches(self, event: StoredEvent) -> bool:
        found = resolve(event.data, self.path)
        if self.op == "eq":
            return json_equal(found, self.value)
        kind = json_kind(found)
        if kind != json_kind(self.value):
            return False
        if self.op == "lt":
            return bool(found < self.value)
        if self.op == "le":
            return bool(found <= self.value)
        if self.op == "gt":
            return bool(found > self.value)
        return bool(found >= self.value)


@dataclass(frozen=True)
class FieldIn(Filter):
    """``data.<path>`` equals one of ``values``."""

    path: Path
    values: tuple[Scalar, ...]

    def matches(self, event: StoredEvent) -> bool:
        found = resolve(event.data, self.path)
        return any(json_equal(found, v) for v in self.values)


@dataclass(frozen=True)
class FieldExists(Filter):
    """``data.<path>`` resolves (possibly to ``null``)."""

    path: Path

    def matches(self, event: StoredEvent) -> bool:
        return resolve(event.data, self.path) is not MISSING


@dataclass(frozen=True)
class FieldContains(Filter):
    """Substring of a string field, or element of an array field."""

    path: Path
    value: Scalar

    def matches(self, event: StoredEvent) -> bool:
        found = resolve(event.data, self.path)
        if isinstance(found, str) and isinstance(self.value, str):
            return self.value in found
        if json_kind(found) == "array":
            return any(json_equal(item, self.value) for item in found)
        return False


@dataclass(frozen=True, eq=False)
class Field:
    """A path into ``data``; its operators build filters (``Q.data("user.id") == 1``)."""

    path: Path

    def _compare(self, op: CompareOp, value: object) -> FieldCompare:
        scalar = check_scalar(value)
        if op != "eq" and (scalar is None or isinstance(scalar, bool)):
            fail("<, <=, >, >= take a number or a string", "value")
        return FieldCompare(self.path, op, scalar)

    def __eq__(self, value: object) -> FieldCompare:  # type: ignore[override]
        return self._compare("eq", value)

    def __ne__(self, value: object) -> Filter:  # type: ignore[override]
        return Not(self._compare("eq", value))

    def __lt__(self, value: object) -> FieldCompare:
        return self._compare("lt", value)

    def __le__(self, value: object) -> FieldCompare:
        return self._compare("le", value)

    def __gt__(self, value: object) -> FieldCompare:
        return self._compare("gt", value)

    def __ge__(self, value: object) -> FieldCompare:
        return self._compare("ge", value)

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        fail("a data field has no truth value: compare it (==, <, in_, exists ...)", "filter")

    def in_(self, values: Iterable[object]) -> FieldIn:
        """Equal to one of ``values`` (a list of at most ``MAX_IN_VALUES`` scalars)."""
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
            fail("in_ takes a list of JSON scalars", "value")
        items = tuple(check_scalar(v) for v in values)
        if len(items) > MAX_IN_VALUES:
            fail(f"in_ takes at most {MAX_IN_VALUES} values", "value")
        return FieldIn(self.path, items)

    def exists(self) -> FieldExists:
        """The path resolves (a ``null`` value counts as present)."""
        return FieldExists(self.path)

    def contains(self, value: object) -> FieldContains:
        """Substring of a string field, or an element ``==`` value of an array field."""
        return FieldContains(self.path, check_scalar(value))


class Q:
    """Filter constructors: ``Q.type("order.created") & (Q.data("user_id") == 123)``."""

    @staticmethod
    def type(event_type: str) -> TypeIs:
        """Events of this type."""
        return TypeIs((check_text(event_type, "event_type", max_chars=MAX_ID_CHARS, empty=False),))

    @staticmethod
    def types(*event_types: str) -> TypeIs:
        """Events of any of these types (at least one)."""
        if not event_types:
            fail("Q.types needs at least one event type", "event_type")
        if len(event_types) > MAX_IN_VALUES:
            fail(f"Q.types takes at most {MAX_IN_VALUES} types", "event_type")
        return TypeIs(tuple(check_text(t, "event_type", max_chars=MAX_ID_CHARS, empty=False) for t in event_types))

    @staticmethod
    def stream(stream_id: str) -> StreamIs:
        """Events of this stream."""
        return StreamIs(check_text(stream_id, "stream_id", max_chars=MAX_ID_CHARS, empty=False))

    @staticmethod
    def correlation(correlation_id: str) -> CorrelationIs:
        """Events with this correlation id."""
        return CorrelationIs(check_text(correlation_id, "correlation_id", max_chars=MAX_ID_CHARS, empty=False))

    @staticmethod
    def between(start: datetime | None, end: datetime | None) -> TimeBetween:
        """Events recorded at ``start <= t < end`` (timezone-aware; ``None`` leaves a side open)."""
        t0 = None if start is None else check_datetime(start, "start")
        t1 = None if end is None else check_datetime(end, "end")
        if t0 is None and t1 is None:
            fail("Q.between needs at least one of start and end", "start")
        if t0 is not None and t1 is not None and t0 > t1:
            fail("Q.between: start is after end", "start")
        return TimeBetween(t0, t1)

    @staticmethod
    def after_position(position: int) -> PositionAfter:
        """Events with a position greater than ``position``."""
        return PositionAfter(check_position(position))

    @staticmethod
    def data(path: str) -> Field:
        """A field of ``data`` (``"user.id"``); compare it to build a filter."""
        return Field(parse_path(path))


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    """A filter plus order (by position), limit and position bounds.

    Parameters:
        filter: ``None`` matches every event.
        order: ``"asc"`` (oldest first) or ``"desc"``.
        limit: at most this many events (1..``MAX_LIMIT``), or all.
        after: only positions greater than this (exclusive cursor).
        before: only positions smaller than this (exclusive cursor).
    Raises:
        QueryError: any invalid argument.
    """

    filter: Filter | None = None
    order: Order = "asc"
    limit: int | None = None
    after: int | None = None
    before: int | None = None

    def __post_init__(self) -> None:
        if self.filter is not None and not isinstance(self.filter, Filter):
            fail(f"filter must be a Filter (built with Q), not {type(self.filter).__name__}", "filter")
        if not isinstance(self.order, str) or self.order not in ("asc", "desc"):
            fail(f"order must be 'asc' or 'desc', not {self.order!r}", "order")
        if self.limit is not None:
            check_limit(self.limit)
        if self.after is not None:
            check_position(self.after, "after")
        if self.before is not None:
            check_position(self.before, "before")

    def matches(self, event: StoredEvent) -> bool:
        """The filter and the position bounds (not the limit)."""
        return (
            (self.filter is None or self.filter.matches(event))
            and (self.after is None or event.position > self.after)
            and (self.before is None or event.position < self.before)
        )


def as_query(value: Query | Filter | None) -> Query:
    """A :class:`Query` from a query, a filter or ``None``. Raises QueryError otherwise."""
    if isinstance(value, Query):
        return value
    return Query(value)


def parse_cursor(cursor: object) -> int | None:
    """The position a page cursor stands for (``None``: first page). Raises QueryError."""
    if cursor is None:
        return None
    if isinstance(cursor, str) and re.fullmatch(r"[0-9]{1,19}", cursor):
        return check_position(int(cursor), "cursor")
    fail("cursor must be a next_cursor value returned by a previous page", "cursor")


@dataclass(frozen=True)
class Page:
    """One page of events; pass ``next_cursor`` back for the next (``None``: no more)."""

    events: tuple[StoredEvent, ...]
    next_cursor: str | None


def bucket_start(moment: datetime, per: Per) -> str:
    """ISO 8601 start (UTC) of the ``per`` bucket holding ``moment``."""
    t = moment.astimezone(UTC)
    if per == "day":
        t = t.replace(hour=0, minute=0, second=0, microsecond=0)
    elif per == "hour":
        t = t.replace(minute=0, second=0, microsecond=0)
    else:
        t = t.replace(second=0, microsecond=0)
    return t.isoformat()
