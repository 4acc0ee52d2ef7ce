"""The event query language: filters are values, never strings.

``Q`` builds immutable :class:`Filter` trees; ``&``, ``|`` and ``~`` combine
them. A backend compiles a tree to SQL with bound parameters only (see
``esf.plugins.sqlalchemy_events._query``); :meth:`Filter.matches` is the
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

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias

from ..errors import QueryError

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

Scalar: TypeAlias = str | int | float | bool | None
PathSegment: TypeAlias = str | int
Path: TypeAlias = tuple[PathSegment, ...]
Order: TypeAlias = Literal["asc", "desc"]
Per: TypeAlias = Literal["minute", "hour", "day"]
CompareOp: TypeAlias = Literal["eq", "lt", "le", "gt", "ge"]

#: A key segment of a data path.
KEY_SEGMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: An array-index segment of a data path (non-negative, no leading zero).
INDEX_SEGMENT_RE = re.compile(r"^(?:0|[1-9][0-9]{0,8})$")
#: Maximum number of segments in a data path.
MAX_PATH_DEPTH = 16
#: Maximum length of a string value, in characters.
MAX_STRING_CHARS = 10_000
#: Maximum number of values in ``in_``.
MAX_IN_VALUES = 1_000
#: Maximum number of nodes in one filter tree.
MAX_FILTER_NODES = 1_000
#: Maximum nesting depth of a filter tree.
MAX_FILTER_DEPTH = 64
#: Maximum page size / limit.
MAX_LIMIT = 100_000
#: Maximum length of an event type, stream id or correlation id (column sizes).
MAX_ID_CHARS = 200
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Column fields accepted by ``count(by=...)``; anything else must be ``data.<path>``.
GROUP_COLUMNS = ("event_type", "stream_id", "correlation_id")
#: Columns that sequences can correlate on.
SEQUENCE_KEYS = ("correlation_id", "stream_id")
PERIODS: tuple[Per, ...] = ("minute", "hour", "day")
AGGREGATES = ("min", "max", "avg", "sum")


def _fail(message: str, where: str = "query") -> NoReturn:
    raise QueryError(message, errors={where: message})


# ---------------------------------------------------------------- validation


def parse_path(path: object) -> Path:
    """Split and validate a data path (``"user.id"``, ``"items.0.sku"``).

    Raises:
        QueryError: not a string, empty, too deep, or a segment is invalid.
    Returns:
        The segments: ``str`` keys and ``int`` array indexes.
    """
    if not isinstance(path, str):
        _fail(f"a data path must be a string like 'user.id', not {type(path).__name__}", "path")
    segments = path.split(".")
    if len(segments) > MAX_PATH_DEPTH:
        _fail(f"a data path has at most {MAX_PATH_DEPTH} segments; got {len(segments)}", "path")
    out: list[PathSegment] = []
    for seg in segments:
        if INDEX_SEGMENT_RE.fullmatch(seg):
            out.append(int(seg))
        elif KEY_SEGMENT_RE.fullmatch(seg):
            out.append(seg)
        else:
            _fail(
                f"invalid data path segment {seg[:80]!r}: use letters, digits and '_' (not first), "
                "at most 64 characters, or an array index such as 0",
                "path",
            )
    return tuple(out)


def _string(value: object, what: str, *, max_chars: int = MAX_STRING_CHARS, empty: bool = True) -> str:
    if not isinstance(value, str):
        _fail(f"{what} must be a string, not {type(value).__name__}", what)
    text = str.__str__(value)
    if not empty and not text:
        _fail(f"{what} must not be empty", what)
    if len(text) > max_chars:
        _fail(f"{what} is longer than {max_chars} characters", what)
    if "\x00" in text:
        _fail(f"{what} must not contain the NUL character", what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _fail(f"{what} is not valid Unicode text (lone surrogate)", what)
    return text


def check_scalar(value: object, what: str = "value") -> Scalar:
    """Validate and normalise one JSON scalar (``bool``/``int``/``float`` subclasses become plain).

    Raises:
        QueryError: not a JSON scalar, a non-finite float, an int outside 64 bits or a bad string.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            _fail(f"{what} {number} is outside the 64-bit integer range", what)
        return number
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(f"{what} must be a finite number (no NaN or infinity)", what)
        return float(value)
    if isinstance(value, str):
        return _string(value, what)
    _fail(f"{what} must be a JSON scalar (str, int, float, bool or None), not {type(value).__name__}", what)


def check_datetime(value: object, what: str) -> datetime:
    """A timezone-aware datetime converted to UTC. Raises QueryError otherwise."""
    if not isinstance(value, datetime):
        _fail(f"{what} must be a datetime, not {type(value).__name__}", what)
    if value.tzinfo is None or value.utcoffset() is None:
        _fail(f"{what} must be timezone-aware (for example datetime.now(UTC))", what)
    return value.astimezone(UTC)


def check_position(value: object, what: str = "position") -> int:
    """A non-negative 64-bit position. Raises QueryError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{what} must be an int, not {type(value).__name__}", what)
    if not 0 <= value <= _INT64_MAX:
        _fail(f"{what} must be between 0 and 2**63-1", what)
    return int(value)


def check_limit(value: object, what: str = "limit") -> int:
    """A limit between 1 and ``MAX_LIMIT``. Raises QueryError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        _fail(f"{what} must be an int between 1 and {MAX_LIMIT}", what)
    return int(value)


def check_per(value: object) -> Per | None:
    """``None`` or one of ``minute``, ``hour``, ``day``. Raises QueryError otherwise."""
    if value is None:
        return None
    for per in PERIODS:
        if value == per and isinstance(value, str):
            return per
    _fail(f"per must be one of {', '.join(PERIODS)}, not {value!r}", "per")


def parse_field(value: object, what: str = "by", columns: Sequence[str] = GROUP_COLUMNS) -> str | Path:
    """A column name from ``columns`` or ``data.<path>`` (returned as a path tuple).

    Raises:
        QueryError: anything else.
    """
    if isinstance(value, str):
        if value in columns:
            return value
        if value.startswith("data."):
            return parse_path(value[5:])
    _fail(f"{what} must be one of {', '.join(columns)} or 'data.<path>', not {str(value)[:80]!r}", what)


# ---------------------------------------------------------------- the model


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`resolve` returns for a path that does not resolve.
MISSING: Any = _Missing()


def resolve(data: Any, path: Path) -> Any:
    """The value at ``path`` in ``data``, or ``MISSING``."""
    current = data
    for seg in path:
        if isinstance(seg, int):
            if isinstance(current, list | tuple) and seg < len(current):
                current = current[seg]
            else:
                return MISSING
        elif isinstance(current, Mapping) and seg in current:
            current = current[seg]
        else:
            return MISSING
    return current


def json_kind(value: Any) -> str:
    """``null``, ``boolean``, ``number``, ``string``, ``array``, ``object`` (or ``missing``)."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array"


def json_equal(a: Any, b: Scalar) -> bool:
    """Typed equality of a stored value and a scalar (``true`` is not ``1``)."""
    kind = json_kind(a)
    return kind == json_kind(b) and kind in ("null", "boolean", "number", "string") and a == b


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
        _fail("a filter has no truth value: combine filters with & | ~, not 'and', 'or', 'not'", "filter")

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
            _fail(f"can only combine filters, not {type(side).__name__}", "filter")
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
            _fail(f"can only combine filters, not {type(part).__name__}", "filter")
    sizes = [_measure(p) for p in parts]
    if 1 + sum(n for n, _ in sizes) > MAX_FILTER_NODES:
        _fail(f"a filter has at most {MAX_FILTER_NODES} nodes", "filter")
    if 1 + max((d for _, d in sizes), default=0) > MAX_FILTER_DEPTH:
        _fail(f"filters nest at most {MAX_FILTER_DEPTH} levels deep", "filter")


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
            _fail("<, <=, >, >= take a number or a string", "value")
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
        _fail("a data field has no truth value: compare it (==, <, in_, exists ...)", "filter")

    def in_(self, values: Iterable[object]) -> FieldIn:
        """Equal to one of ``values`` (a list of at most ``MAX_IN_VALUES`` scalars)."""
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
            _fail("in_ takes a list of JSON scalars", "value")
        items = tuple(check_scalar(v) for v in values)
        if len(items) > MAX_IN_VALUES:
            _fail(f"in_ takes at most {MAX_IN_VALUES} values", "value")
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
        return TypeIs((_string(event_type, "event_type", max_chars=MAX_ID_CHARS, empty=False),))

    @staticmethod
    def types(*event_types: str) -> TypeIs:
        """Events of any of these types (at least one)."""
        if not event_types:
            _fail("Q.types needs at least one event type", "event_type")
        if len(event_types) > MAX_IN_VALUES:
            _fail(f"Q.types takes at most {MAX_IN_VALUES} types", "event_type")
        return TypeIs(tuple(_string(t, "event_type", max_chars=MAX_ID_CHARS, empty=False) for t in event_types))

    @staticmethod
    def stream(stream_id: str) -> StreamIs:
        """Events of this stream."""
        return StreamIs(_string(stream_id, "stream_id", max_chars=MAX_ID_CHARS, empty=False))

    @staticmethod
    def correlation(correlation_id: str) -> CorrelationIs:
        """Events with this correlation id."""
        return CorrelationIs(_string(correlation_id, "correlation_id", max_chars=MAX_ID_CHARS, empty=False))

    @staticmethod
    def between(start: datetime | None, end: datetime | None) -> TimeBetween:
        """Events recorded at ``start <= t < end`` (timezone-aware; ``None`` leaves a side open)."""
        t0 = None if start is None else check_datetime(start, "start")
        t1 = None if end is None else check_datetime(end, "end")
        if t0 is None and t1 is None:
            _fail("Q.between needs at least one of start and end", "start")
        if t0 is not None and t1 is not None and t0 > t1:
            _fail("Q.between: start is after end", "start")
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
            _fail(f"filter must be a Filter (built with Q), not {type(self.filter).__name__}", "filter")
        if not isinstance(self.order, str) or self.order not in ("asc", "desc"):
            _fail(f"order must be 'asc' or 'desc', not {self.order!r}", "order")
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
    _fail("cursor must be a next_cursor value returned by a previous page", "cursor")


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
