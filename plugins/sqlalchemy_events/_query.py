"""Compile event filters to SQLAlchemy Core and run them (PostgreSQL and SQLite).

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
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    and_,
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
from sqlalchemy.sql.expression import ColumnElement, FromClause, Select

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
    Page,
    Path,
    PositionAfter,
    Query,
    Scalar,
    StreamIs,
    TimeBetween,
    TypeIs,
    as_query,
    check_limit,
    parse_cursor,
)

from ._schema import events

__all__ = ["EVENT_COLUMNS", "compile_filter", "event_columns", "fetch", "fetch_page", "row_to_event"]

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

_SQLITE_KINDS: dict[str, tuple[str, ...]] = {
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
    """A StoredEvent from a result row whose StoredEvent columns start at ``offset``."""
    values = tuple(row)[offset : offset + len(EVENT_COLUMNS)]
    fields = dict(zip(EVENT_COLUMNS, values, strict=True))
    fields["recorded_at"] = as_utc(fields["recorded_at"])
    for name in ("data", "metadata"):
        if isinstance(fields[name], str):  # a driver that hands back JSON text
            fields[name] = json.loads(fields[name])
    return StoredEvent(**fields)


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


def compile_filter(node: Filter, dialect: str, table: FromClause = events) -> Cond:
    """A boolean SQL expression (never NULL) equivalent to ``node.matches``.

    Parameters:
        node: the filter tree.
        dialect: ``"postgresql"`` or ``"sqlite"``.
        table: the events table or an alias of it (sequences use two).
    Raises:
        QueryError: an unknown filter node.
    Returns:
        A Core expression with bound parameters only.
    """
    c = table.c
    if isinstance(node, And):
        return and_(*(compile_filter(p, dialect, table) for p in node.parts))
    if isinstance(node, Or):
        return or_(*(compile_filter(p, dialect, table) for p in node.parts))
    if isinstance(node, Not):
        return not_(compile_filter(node.part, dialect, table))
    if isinstance(node, TypeIs):
        return c.event_type == node.types[0] if len(node.types) == 1 else c.event_type.in_(node.types)
    if isinstance(node, StreamIs):
        return c.stream_id == node.stream_id
    if isinstance(node, CorrelationIs):
        # ``= :c`` alone is NULL for a NULL column; the AND makes it false and keeps the index usable.
        return and_(c.correlation_id == node.correlation_id, c.correlation_id.is_not(None))
    if isinstance(node, TimeBetween):
        parts = []
        if node.start is not None:
            parts.append(c.recorded_at >= node.start)
        if node.end is not None:
            parts.append(c.recorded_at < node.end)
        return and_(*parts)
    if isinstance(node, PositionAfter):
        return c.position > node.position
    data = c.data
    if dialect == "postgresql":
        return _pg_leaf(node, data)
    if dialect == "sqlite":
        return _sqlite_leaf(node, data)
    raise QueryError(f"event queries support PostgreSQL and SQLite, not {dialect}")


def _kind(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string"


# PostgreSQL ------------------------------------------------------------------


def _pg_jsonb(value: Any) -> Cond:
    return cast(literal(value, type_=JSONB), JSONB)


def _pg_key(seg: str | int) -> Cond:
    return cast(literal(seg, Integer), Integer) if isinstance(seg, int) else cast(literal(seg, String), Text)


def _pg_at(data: Cond, path: Path) -> Cond:
    expr: Cond = type_coerce(data, JSONB)
    for seg in path:
        step = expr.op("->", return_type=JSONB)(_pg_key(seg))
        # PostgreSQL treats a scalar as a one-element array for ``-> 0``; an index only descends into arrays.
        expr = case((func.jsonb_typeof(expr) == "array", step), else_=null()) if isinstance(seg, int) else step
    return expr


def _pg_text(data: Cond, path: Path) -> Cond:
    """The field as text: the string itself for JSON strings (callers guard the type)."""
    return _pg_at(data, path[:-1]).op("->>", return_type=Text)(_pg_key(path[-1]))


def _pg_contains(data: Cond, path: Path, leaf: Any) -> Cond:
    doc = leaf
    for seg in reversed(path):
        doc = {seg: doc}
    return type_coerce(data, JSONB).op("@>", return_type=Boolean)(_pg_jsonb(doc))


def _pg_if_kind(x: Cond, kind: str, then: Cond) -> Cond:
    return case((func.jsonb_typeof(x) == kind, then), else_=false())


def _keys_only(path: Path) -> bool:
    return all(isinstance(seg, str) for seg in path)


def _pg_eq(data: Cond, path: Path, value: Scalar) -> Cond:
    if _keys_only(path):
        return _pg_contains(data, path, value)
    return case((_pg_at(data, path).op("=", return_type=Boolean)(_pg_jsonb(value)), True), else_=false())


def _pg_leaf(node: Filter, data: Cond) -> Cond:
    if isinstance(node, FieldCompare):
        if node.op == "eq":
            return _pg_eq(data, node.path, node.value)
        op = _PG_OPS[node.op]
        if isinstance(node.value, str):
            text = _pg_text(data, node.path).collate("C")
            then = text.op(op, return_type=Boolean)(cast(literal(node.value, String), Text))
            return _pg_if_kind(_pg_at(data, node.path), "string", then)
        x = _pg_at(data, node.path)
        return _pg_if_kind(x, "number", x.op(op, return_type=Boolean)(_pg_jsonb(node.value)))
    if isinstance(node, FieldIn):
        if not node.values:
            return false()
        return or_(*(_pg_eq(data, node.path, v) for v in node.values))
    if isinstance(node, FieldExists):
        return _pg_at(data, node.path).is_not(None)
    if isinstance(node, FieldContains):
        if _keys_only(node.path):
            element = _pg_contains(data, node.path, [node.value])
        else:
            x = _pg_at(data, node.path)
            element = _pg_if_kind(x, "array", x.op("@>", return_type=Boolean)(_pg_jsonb([node.value])))
        if not isinstance(node.value, str):
            return element
        found = func.strpos(_pg_text(data, node.path), cast(literal(node.value, String), Text)) > 0
        return or_(element, _pg_if_kind(_pg_at(data, node.path), "string", found))
    raise QueryError(f"unknown filter node {type(node).__name__}")


# SQLite ----------------------------------------------------------------------


def sqlite_path(path: Path) -> str:
    """The JSON1 path of validated segments: ``$."user"."id"``, ``$."items"[0]``."""
    return "$" + "".join(f"[{seg}]" if isinstance(seg, int) else f'."{seg}"' for seg in path)


def _sl_type(data: Cond, path: Path) -> Cond:
    return func.json_type(data, literal(sqlite_path(path), String), type_=String)


def _sl_value(data: Cond, path: Path) -> Cond:
    return func.json_extract(data, literal(sqlite_path(path), String))


def _sl_kinds(value: Scalar) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("true",) if value else ("false",)
    return _SQLITE_KINDS[_kind(value)]


def _sl_typed(kind_expr: Cond, value_expr: Cond, value: Scalar, op: str = "eq") -> Cond:
    kinds = _sl_kinds(value)
    if value is None or isinstance(value, bool):
        then: Cond = literal(True, Boolean)
    else:
        then = value_expr.op(_PG_OPS[op], return_type=Boolean)(literal(value))
    return case((kind_expr.in_(kinds), then), else_=false())


def _sqlite_leaf(node: Filter, data: Cond) -> Cond:
    if isinstance(node, FieldCompare):
        return _sl_typed(_sl_type(data, node.path), _sl_value(data, node.path), node.value, node.op)
    if isinstance(node, FieldIn):
        if not node.values:
            return false()
        return or_(*(_sl_typed(_sl_type(data, node.path), _sl_value(data, node.path), v) for v in node.values))
    if isinstance(node, FieldExists):
        return _sl_type(data, node.path).is_not(None)
    if isinstance(node, FieldContains):
        each = func.json_each(data, literal(sqlite_path(node.path), String)).table_valued("value", "type")
        member = exists(select(literal(1)).select_from(each).where(_sl_typed(each.c.type, each.c.value, node.value)))
        element = case((_sl_type(data, node.path) == "array", member), else_=false())
        if not isinstance(node.value, str):
            return element
        found = func.instr(_sl_value(data, node.path), literal(node.value, String)) > 0
        return or_(element, case((_sl_type(data, node.path) == "text", found), else_=false()))
    raise QueryError(f"unknown filter node {type(node).__name__}")


# ---------------------------------------------------------------- fetching


def where_clause(query: Query, dialect: str, table: FromClause = events) -> list[Cond]:
    """The WHERE conditions of a query: its filter and its position bounds."""
    conds: list[Cond] = []
    if query.filter is not None:
        conds.append(compile_filter(query.filter, dialect, table))
    if query.after is not None:
        conds.append(table.c.position > query.after)
    if query.before is not None:
        conds.append(table.c.position < query.before)
    return conds


def select_events(query: Query, dialect: str, *, limit: int | None = None) -> Select[Any]:
    """The SELECT for a query, ordered by position."""
    order = events.c.position.asc() if query.order == "asc" else events.c.position.desc()
    stmt = select(*event_columns()).where(*where_clause(query, dialect)).order_by(order)
    limit = limit if limit is not None else query.limit
    return stmt.limit(limit) if limit is not None else stmt


def fetch(conn: Connection, query: Query | Filter | None = None) -> list[StoredEvent]:
    """Events matching ``query`` (a Query, a Filter or None for all), ordered by position.

    Raises:
        QueryError: an invalid query or an unsupported database.
    Returns:
        StoredEvent values.
    """
    q = as_query(query)
    return [row_to_event(row) for row in conn.execute(select_events(q, dialect_of(conn)))]


def fetch_page(
    conn: Connection, query: Query | Filter | None = None, limit: int = 100, cursor: str | None = None
) -> Page:
    """One page of ``limit`` events after ``cursor`` in the query's order.

    Parameters:
        query: the query (its own ``limit`` is ignored; its ``after``/``before`` bounds apply).
        limit: page size, 1..MAX_LIMIT.
        cursor: ``None`` for the first page, else the ``next_cursor`` of the previous page.
    Raises:
        QueryError: an invalid query, limit or cursor.
    Returns:
        A Page; ``next_cursor`` is ``None`` on the last page.
    """
    q = as_query(query)
    size = check_limit(limit)
    position = parse_cursor(cursor)
    stmt = select_events(q, dialect_of(conn), limit=size + 1)
    if position is not None:
        stmt = stmt.where(events.c.position > position if q.order == "asc" else events.c.position < position)
    found = [row_to_event(row) for row in conn.execute(stmt)]
    more = len(found) > size
    page = tuple(found[:size])
    return Page(page, str(page[-1].position) if more else None)


def to_number(value: Any) -> int | float | None:
    """A SQL number as ``int`` when integral, else ``float`` (``None`` stays)."""
    if value is None:
        return None
    if isinstance(value, Decimal | float):
        if value == value.to_integral_value() if isinstance(value, Decimal) else value.is_integer():
            return int(value)
        return float(value)
    return int(value)
