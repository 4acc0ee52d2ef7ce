"""SQL building blocks of event queries: filters compiled to SQLAlchemy Core, rows to StoredEvents.

Nothing a caller passes reaches the SQL text: every value, every path segment
and every SQLite JSON path string is a bound parameter; operators and
function names come from this module only.

PostgreSQL (JSONB): equality and array membership on a key-only path compile
to containment, ``data @> '{"user": {"id": 123}}'``, which the
``jsonb_path_ops`` GIN index serves; containment at nested levels is exact
for scalars, so it is also the whole predicate. Other leaves walk the path
with ``->`` (text keys, integer indexes), guard on ``jsonb_typeof`` inside a
``CASE`` and compare JSONB to JSONB (numbers numerically) or text under
``COLLATE "C"`` (code-point order).

SQLite (JSON1): ``json_type(data, :path)`` guards the JSON type and
``json_extract(data, :path)`` yields the value, with ``:path`` built from the
validated segments (``$."user"."id"``, ``$."items"[0]``) and bound.

Every leaf is two-valued (never SQL ``NULL``), so ``~`` is plain negation on
both backends, as in :meth:`esf.events._query.Filter.matches`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import ColumnElement, FromClause

from esf.errors import QueryError
from esf.events._model import StoredEvent
from esf.events._query import (
    And,
    CorrelationIs,
    FieldCompare,
    FieldContains,
    FieldExists,
    FieldIn,
    Filter,
    Not,
    Or,
    PositionAfter,
    StreamIs,
    TimeBetween,
    TypeIs,
)
from esf.events._query_values import Path, Scalar

from ._schema import events

__all__ = [
    "EVENT_COLUMNS",
    "Binder",
    "NamedBinder",
    "compile_filter",
    "dialect_of",
    "event_columns",
    "filter_shape",
    "filter_values",
    "leaf_slots",
    "row_to_event",
    "sqlite_path",
]

#: The columns that make a StoredEvent, in field order.
EVENT_COLUMNS = (
    "position",
    "event_id",
    "stream_id",
    "stream_version",
    "event_type",
    "recorded_at",
    "monotonic_ns",
    "node",
    "pid",
    "correlation_id",
    "parent_id",
    "data",
    "metadata",
)

#: SQLite ``json_type`` names of each JSON kind.
SQLITE_KINDS: dict[str, tuple[str, ...]] = {
    "number": ("integer", "real"),
    "string": ("text",),
    "null": ("null",),
}
_PG_OPS = {"eq": "=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}

Cond = ColumnElement[Any]


def event_columns(table: FromClause = events) -> list[ColumnElement[Any]]:
    """The StoredEvent columns of ``table`` (or an alias of it)."""
    return [table.c[name] for name in EVENT_COLUMNS]


def row_to_event(row: Any, offset: int = 0) -> StoredEvent:
    """A StoredEvent from a result row whose StoredEvent columns (``EVENT_COLUMNS``) start at ``offset``."""
    (
        position,
        event_id,
        stream_id,
        stream_version,
        event_type,
        recorded_at,
        monotonic_ns,
        node,
        pid,
        correlation_id,
        parent_id,
        data,
        metadata,
    ) = tuple(row[offset : offset + len(EVENT_COLUMNS)])
    return StoredEvent(
        position=position,
        event_id=event_id,
        stream_id=stream_id,
        stream_version=stream_version,
        event_type=event_type,
        recorded_at=as_utc(recorded_at),
        monotonic_ns=monotonic_ns,
        node=node,
        pid=pid,
        correlation_id=correlation_id,
        parent_id=parent_id,
        data=json.loads(data) if isinstance(data, str) else data,  # a driver that hands back JSON text
        metadata=json.loads(metadata) if isinstance(metadata, str) else metadata,
    )


def as_utc(value: datetime) -> datetime:
    """A timezone-aware UTC datetime (SQLite hands back naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dialect_of(conn: Connection) -> str:
    """``postgresql`` or ``sqlite``. Raises QueryError for any other database."""
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite"):
        raise QueryError(f"event queries support PostgreSQL and SQLite, not {name}")
    return name


# ---------------------------------------------------------------- compiling


#: A value to bind and its SQL type (``None``: inferred from the value).
Slot = tuple[Any, Any]
#: Makes the bound parameter for one slot: a literal, or a named parameter of a cached template.
Binder = Callable[[Any, Any], Cond]


def _literal(value: Any, type_: Any) -> Cond:
    return literal(value, type_)


class NamedBinder:
    """Binds slots as ``q0, q1, …`` (a reusable statement) and records their values in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, type_: Any) -> Cond:
        name = f"q{len(self.values)}"
        self.values.append(value)
        return bindparam(name, type_=type_)


def compile_filter(node: Filter, dialect: str, table: FromClause = events, bind: Binder = _literal) -> Cond:
    """A boolean SQL expression (never NULL) equivalent to ``node.matches``.

    Parameters:
        node: the filter tree.
        dialect: ``"postgresql"`` or ``"sqlite"``.
        table: the events table or an alias of it (sequences use two).
        bind: makes the bound parameter of each value (default: a literal bind).
    Raises:
        QueryError: an unknown filter node or dialect.
    Returns:
        A Core expression with bound parameters only.
    """
    if isinstance(node, And):
        return and_(*(compile_filter(p, dialect, table, bind) for p in node.parts))
    if isinstance(node, Or):
        return or_(*(compile_filter(p, dialect, table, bind) for p in node.parts))
    if isinstance(node, Not):
        return not_(compile_filter(node.part, dialect, table, bind))
    p = [bind(value, type_) for value, type_ in leaf_slots(node, dialect)]
    c = table.c
    if isinstance(node, TypeIs):
        return c.event_type == p[0] if len(p) == 1 else c.event_type.in_(p)
    if isinstance(node, StreamIs):
        return c.stream_id == p[0]
    if isinstance(node, CorrelationIs):
        # ``= :c`` alone is NULL for a NULL column; the AND makes it false and keeps the index usable.
        return and_(c.correlation_id == p[0], c.correlation_id.is_not(None))
    if isinstance(node, TimeBetween):
        bounds = iter(p)
        parts = []
        if node.start is not None:
            parts.append(c.recorded_at >= next(bounds))
        if node.end is not None:
            parts.append(c.recorded_at < next(bounds))
        return and_(*parts)
    if isinstance(node, PositionAfter):
        return c.position > p[0]
    if dialect == "postgresql":
        return _pg_leaf(node, c.data, p)
    return _sqlite_leaf(node, c.data, p)


def leaf_slots(node: Filter, dialect: str) -> list[Slot]:
    """The values a leaf binds, in the order its compiled SQL uses them (the single source of both)."""
    if dialect not in ("postgresql", "sqlite"):
        raise QueryError(f"event queries support PostgreSQL and SQLite, not {dialect}")
    if isinstance(node, TypeIs):
        return [(t, String) for t in node.types]
    if isinstance(node, StreamIs):
        return [(node.stream_id, String)]
    if isinstance(node, CorrelationIs):
        return [(node.correlation_id, String)]
    if isinstance(node, TimeBetween):
        return [(t, events.c.recorded_at.type) for t in (node.start, node.end) if t is not None]
    if isinstance(node, PositionAfter):
        return [(node.position, events.c.position.type)]
    if isinstance(node, FieldCompare | FieldIn | FieldExists | FieldContains):
        return _pg_slots(node) if dialect == "postgresql" else _sqlite_slots(node)
    raise QueryError(f"unknown filter node {type(node).__name__}")


def filter_shape(node: Filter) -> Hashable:
    """What the compiled SQL of ``node`` depends on, apart from the bound values.

    Two filters with one shape compile to the same statement with different parameters.
    """
    if isinstance(node, And | Or):
        return (type(node).__name__, tuple(filter_shape(p) for p in node.parts))
    if isinstance(node, Not):
        return ("Not", filter_shape(node.part))
    if isinstance(node, TypeIs):
        return ("TypeIs", len(node.types))
    if isinstance(node, TimeBetween):
        return ("TimeBetween", node.start is None, node.end is None)
    if isinstance(node, FieldCompare):
        return ("FieldCompare", node.path, node.op, _value_shape(node.value))
    if isinstance(node, FieldIn):
        return ("FieldIn", node.path, tuple(_value_shape(v) for v in node.values))
    if isinstance(node, FieldExists):
        return ("FieldExists", node.path)
    if isinstance(node, FieldContains):
        return ("FieldContains", node.path, _value_shape(node.value))
    return (type(node).__name__,)


def _value_shape(value: Scalar) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)  # SQLite compiles null, true and false as JSON types, not values
    return _kind(value)


def filter_values(node: Filter, dialect: str, out: list[Any]) -> None:
    """Append the bound values of ``node`` in the order :func:`compile_filter` binds them."""
    if isinstance(node, And | Or):
        for part in node.parts:
            filter_values(part, dialect, out)
    elif isinstance(node, Not):
        filter_values(node.part, dialect, out)
    else:
        out.extend(value for value, _ in leaf_slots(node, dialect))


def _kind(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string"


# PostgreSQL ------------------------------------------------------------------


# Built once: SQLAlchemy spends more time creating a custom operator than the rest of a leaf.
_JSONB = JSONB()
_ARROW = operators.custom_op("->", return_type=JSONB)
_CONTAINS = operators.custom_op("@>", return_type=Boolean)


def _pg_key(seg: str | int) -> Cond:
    # Path segments are part of the statement's shape: constant binds, never caller values.
    return cast(literal(seg, Integer), Integer) if isinstance(seg, int) else cast(literal(seg, String), Text)


def pg_at(data: Cond, path: Path) -> Cond:
    expr: Cond = type_coerce(data, _JSONB)
    for seg in path:
        step = expr.operate(_ARROW, _pg_key(seg))
        # PostgreSQL treats a scalar as a one-element array for ``-> 0``; an index only descends into arrays.
        expr = case((func.jsonb_typeof(expr) == "array", step), else_=null()) if isinstance(seg, int) else step
    return expr


def _pg_text(data: Cond, path: Path) -> Cond:
    """The field as text: the string itself for JSON strings (callers guard the type)."""
    return pg_at(data, path[:-1]).op("->>", return_type=Text)(_pg_key(path[-1]))


def _pg_doc(path: Path, leaf: Any) -> dict[str, Any]:
    doc = leaf
    for seg in reversed(path):
        doc = {seg: doc}
    return doc  # type: ignore[no-any-return]


def _pg_if_kind(x: Cond, kind: str, then: Cond) -> Cond:
    return case((func.jsonb_typeof(x) == kind, then), else_=false())


def _keys_only(path: Path) -> bool:
    return all(isinstance(seg, str) for seg in path)


def _pg_eq_slot(path: Path, value: Scalar) -> Slot:
    # Key-only paths: the containment document (GIN-indexed); else the JSONB value itself.
    return (_pg_doc(path, value) if _keys_only(path) else value), _JSONB


def _pg_slots(node: FieldCompare | FieldIn | FieldExists | FieldContains) -> list[Slot]:
    if isinstance(node, FieldCompare):
        if node.op == "eq":
            return [_pg_eq_slot(node.path, node.value)]
        return [(node.value, String if isinstance(node.value, str) else _JSONB)]
    if isinstance(node, FieldIn):
        return [_pg_eq_slot(node.path, v) for v in node.values]
    if isinstance(node, FieldContains):
        element = _pg_doc(node.path, [node.value]) if _keys_only(node.path) else [node.value]
        return [(element, _JSONB)] + ([(node.value, String)] if isinstance(node.value, str) else [])
    return []


def _pg_eq(data: Cond, path: Path, param: Cond) -> Cond:
    if _keys_only(path):
        return type_coerce(data, _JSONB).operate(_CONTAINS, param)
    return case((pg_at(data, path).op("=", return_type=Boolean)(param), True), else_=false())


def _pg_leaf(node: Filter, data: Cond, p: list[Cond]) -> Cond:
    if isinstance(node, FieldCompare):
        if node.op == "eq":
            return _pg_eq(data, node.path, p[0])
        op = _PG_OPS[node.op]
        if isinstance(node.value, str):
            text = _pg_text(data, node.path).collate("C")
            return _pg_if_kind(pg_at(data, node.path), "string", text.op(op, return_type=Boolean)(cast(p[0], Text)))
        x = pg_at(data, node.path)
        return _pg_if_kind(x, "number", x.op(op, return_type=Boolean)(p[0]))
    if isinstance(node, FieldIn):
        if not node.values:
            return false()
        return or_(*(_pg_eq(data, node.path, param) for param in p))
    if isinstance(node, FieldExists):
        return pg_at(data, node.path).is_not(None)
    if isinstance(node, FieldContains):
        if _keys_only(node.path):
            element = type_coerce(data, _JSONB).operate(_CONTAINS, p[0])
        else:
            x = pg_at(data, node.path)
            element = _pg_if_kind(x, "array", x.operate(_CONTAINS, p[0]))
        if not isinstance(node.value, str):
            return element
        found = func.strpos(_pg_text(data, node.path), cast(p[1], Text)) > 0
        return or_(element, _pg_if_kind(pg_at(data, node.path), "string", found))
    raise QueryError(f"unknown filter node {type(node).__name__}")


# SQLite ----------------------------------------------------------------------


def sqlite_path(path: Path) -> str:
    """The JSON1 path of validated segments: ``$."user"."id"``, ``$."items"[0]``."""
    return "$" + "".join(f"[{seg}]" if isinstance(seg, int) else f'."{seg}"' for seg in path)


def sqlite_type(data: Cond, path: Path) -> Cond:
    return func.json_type(data, literal(sqlite_path(path), String), type_=String)


def sqlite_value(data: Cond, path: Path) -> Cond:
    return func.json_extract(data, literal(sqlite_path(path), String))


def _sl_kinds(value: Scalar) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("true",) if value else ("false",)
    return SQLITE_KINDS[_kind(value)]


def _sl_slot(value: Scalar) -> list[Slot]:
    # null, true and false are matched by JSON type alone: no value to bind.
    return [] if value is None or isinstance(value, bool) else [(value, None)]


def _sqlite_slots(node: FieldCompare | FieldIn | FieldExists | FieldContains) -> list[Slot]:
    if isinstance(node, FieldCompare):
        return _sl_slot(node.value)
    if isinstance(node, FieldIn):
        return [slot for v in node.values for slot in _sl_slot(v)]
    if isinstance(node, FieldContains):
        return _sl_slot(node.value) + ([(node.value, String)] if isinstance(node.value, str) else [])
    return []


def _sl_typed(kind_expr: Cond, value_expr: Cond, value: Scalar, p: list[Cond], op: str = "eq") -> Cond:
    """Type guard plus comparison; consumes the value's parameter from the front of ``p``."""
    kinds = _sl_kinds(value)
    if value is None or isinstance(value, bool):
        then: Cond = literal(True, Boolean)
    else:
        then = value_expr.op(_PG_OPS[op], return_type=Boolean)(p.pop(0))
    return case((kind_expr.in_(kinds), then), else_=false())


def _sqlite_leaf(node: Filter, data: Cond, p: list[Cond]) -> Cond:
    if isinstance(node, FieldCompare):
        return _sl_typed(sqlite_type(data, node.path), sqlite_value(data, node.path), node.value, p, node.op)
    if isinstance(node, FieldIn):
        if not node.values:
            return false()
        return or_(*(_sl_typed(sqlite_type(data, node.path), sqlite_value(data, node.path), v, p) for v in node.values))
    if isinstance(node, FieldExists):
        return sqlite_type(data, node.path).is_not(None)
    if isinstance(node, FieldContains):
        each = func.json_each(data, literal(sqlite_path(node.path), String)).table_valued("value", "type")
        member = exists(select(literal(1)).select_from(each).where(_sl_typed(each.c.type, each.c.value, node.value, p)))
        element = case((sqlite_type(data, node.path) == "array", member), else_=false())
        if not isinstance(node.value, str):
            return element
        found = func.instr(sqlite_value(data, node.path), p[0]) > 0
        return or_(element, case((sqlite_type(data, node.path) == "text", found), else_=false()))
    raise QueryError(f"unknown filter node {type(node).__name__}")
