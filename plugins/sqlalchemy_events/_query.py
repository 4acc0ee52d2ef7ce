"""Run event queries: fetches and pages, counts and aggregates, sequences, and the store mixin.

The executors take a SQLAlchemy ``Connection`` and return StoredEvent values or
numbers; :class:`SqlQueryMixin` gives a store class holding ``self._engine``
the same operations as methods. Filters are compiled by ``_query_sql`` (bound
parameters only) and sequences live in ``_query_sequences``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Numeric, String, cast, func, literal, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.sql.expression import ColumnElement, FromClause, Select

from esf.errors import QueryError, ServiceUnavailable
from esf.events._model import StoredEvent
from esf.events._query import Filter, Page, Query, as_query, parse_cursor
from esf.events._query_values import AGGREGATES, Path, Per, check_limit, check_per, parse_field

from ._query_sequences import check_sequence, followed_by, not_followed_by
from ._query_sql import (
    EVENT_COLUMNS,
    SQLITE_KINDS,
    Binder,
    NamedBinder,
    compile_filter,
    dialect_of,
    event_columns,
    filter_shape,
    filter_values,
    pg_at,
    row_to_event,
    sqlite_type,
    sqlite_value,
)
from ._read_timeout import long_calls
from ._schema import events

__all__ = [
    "EVENT_COLUMNS",
    "SqlQueryMixin",
    "aggregate",
    "compile_filter",
    "count",
    "event_columns",
    "fetch",
    "fetch_page",
    "followed_by",
    "not_followed_by",
    "row_to_event",
    "select_events",
]

Cond = ColumnElement[Any]


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


#: Built once (statements are immutable; each query derives its own).
_SELECT_ASC = select(*event_columns()).order_by(events.c.position.asc())
_SELECT_DESC = select(*event_columns()).order_by(events.c.position.desc())
#: Fetch statements by shape (see :func:`filter_shape`), with named parameters. Building a
#: SQLAlchemy statement and its cache key costs more than a GIN lookup; a statement is immutable,
#: so a shape compiles once per process and each call only binds its values. Bounded: cleared
#: when full (applications use few distinct shapes).
_TEMPLATES: dict[Hashable, Select[Any]] = {}
MAX_TEMPLATES = 1024


def select_events(
    query: Query, dialect: str, *, limit: int | None = None, cursor: int | None = None
) -> tuple[Select[Any], dict[str, Any]]:
    """The SELECT for a query, ordered by position, and its parameters.

    Parameters:
        query: the query (its ``limit`` applies unless ``limit`` is given).
        dialect: ``"postgresql"`` or ``"sqlite"``.
        limit: overrides the query's limit.
        cursor: a position to continue after (in the query's order).
    Returns:
        A statement with named parameters ``q0, q1, …`` and their values.
    """
    limit = limit if limit is not None else query.limit
    shape = None if query.filter is None else filter_shape(query.filter)
    key = (dialect, query.order, shape, query.after is None, query.before is None, cursor is None, limit is None)
    stmt = _TEMPLATES.get(key)
    if stmt is None:
        binder = NamedBinder()
        stmt = _build_select(query, dialect, limit, cursor, binder)
        if len(_TEMPLATES) >= MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[key] = stmt
        values = binder.values
    else:
        values = []
        if query.filter is not None:
            filter_values(query.filter, dialect, values)
        values.extend(v for v in (query.after, query.before, cursor, limit) if v is not None)
    return stmt, {f"q{i}": v for i, v in enumerate(values)}


def _build_select(query: Query, dialect: str, limit: int | None, cursor: int | None, bind: Binder) -> Select[Any]:
    # Binds in the order select_events lists the values: filter, after, before, cursor, limit.
    position = events.c.position
    conds: list[Cond] = []
    if query.filter is not None:
        conds.append(compile_filter(query.filter, dialect, events, bind))
    if query.after is not None:
        conds.append(position > bind(query.after, position.type))
    if query.before is not None:
        conds.append(position < bind(query.before, position.type))
    if cursor is not None:
        mark = bind(cursor, position.type)
        conds.append(position > mark if query.order == "asc" else position < mark)
    base = _SELECT_ASC if query.order == "asc" else _SELECT_DESC
    stmt = base.where(*conds) if conds else base
    return stmt.limit(bind(limit, Integer)) if limit is not None else stmt


def fetch(conn: Connection, query: Query | Filter | None = None) -> list[StoredEvent]:
    """Events matching ``query`` (a Query, a Filter or None for all), ordered by position.

    Raises:
        QueryError: an invalid query or an unsupported database.
    Returns:
        StoredEvent values.
    """
    stmt, params = select_events(as_query(query), dialect_of(conn))
    return [row_to_event(row) for row in conn.execute(stmt, params)]


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
    stmt, params = select_events(q, dialect_of(conn), limit=size + 1, cursor=parse_cursor(cursor))
    found = [row_to_event(row) for row in conn.execute(stmt, params)]
    more = len(found) > size
    page = tuple(found[:size])
    return Page(page, str(page[-1].position) if more else None)


def to_number(value: Any) -> int | float | None:
    """A SQL number as ``int`` when integral, else ``float`` (``None`` stays ``None``)."""
    if value is None:
        return None
    number = float(value)
    if number.is_integer() and (not isinstance(value, Decimal) or value == value.to_integral_value()):
        return int(value)
    return number


# ---------------------------------------------------------------- aggregations

_SQLITE_SCALARS = ("null", "true", "false", "integer", "real", "text")
_SQLITE_BUCKET_CHARS = {"day": 10, "hour": 13, "minute": 16}
_SQLITE_BUCKET_PAD = {"day": " 00:00", "hour": ":00", "minute": ""}


def _bucket(dialect: str, per: Per) -> Cond:
    if dialect == "postgresql":
        return func.date_trunc(literal(per, String), func.timezone(literal("UTC", String), events.c.recorded_at))
    # SQLite holds recorded_at as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): a prefix is the bucket.
    return func.substr(events.c.recorded_at, 1, _SQLITE_BUCKET_CHARS[per], type_=String)


def _bucket_iso(value: Any, per: Per) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat()
    moment = datetime.strptime(str(value) + _SQLITE_BUCKET_PAD[per], "%Y-%m-%d %H:%M")
    return moment.replace(tzinfo=UTC).isoformat()


def _group_columns(dialect: str, group: str | Path) -> tuple[list[Cond], list[Cond]]:
    """(labelled key columns, WHERE guards) for ``count(by=...)``."""
    if isinstance(group, str):
        return [events.c[group].label("k")], []
    if dialect == "postgresql":
        x = pg_at(events.c.data, group)
        return [x.label("k")], [func.jsonb_typeof(x).in_(["string", "number", "boolean", "null"])]
    kind = sqlite_type(events.c.data, group)
    return [kind.label("kt"), sqlite_value(events.c.data, group).label("k")], [kind.in_(_SQLITE_SCALARS)]


def _group_key(row: Any, dialect: str, group: str | Path) -> Any:
    if dialect == "sqlite" and not isinstance(group, str):
        kind, value = row.kt, row.k
        return {"true": True, "false": False, "null": None}.get(kind, value)
    return row.k


def count(
    conn: Connection,
    filter: Query | Filter | None = None,
    *,
    by: str | None = None,
    per: Per | None = None,
) -> Any:
    """Count matching events, optionally grouped by a field and/or per time bucket.

    Parameters:
        filter: a Filter, a Query (its position bounds apply) or ``None`` for every event.
        by: ``event_type``, ``stream_id``, ``correlation_id`` or ``data.<path>``. A data field
            groups by its JSON scalar value (numbers by value, so 1 and 1.0 are one group);
            events where it is missing, an object or an array are not counted.
        per: ``minute``, ``hour`` or ``day`` (UTC buckets).
    Raises:
        QueryError: an invalid filter, field or period.
    Returns:
        ``int`` with neither; ``{key: n}`` with ``by``; ``{bucket_start_iso: n}`` with ``per``;
        ``{bucket_start_iso: {key: n}}`` with both. Keys equal as Python dict keys
        (``True`` and ``1``) are added together.
    """
    q = as_query(filter)
    group = None if by is None else parse_field(by)
    period = check_per(per)
    dialect = dialect_of(conn)
    conds = where_clause(q, dialect)
    if group is None and period is None:
        return conn.execute(select(func.count()).select_from(events).where(*conds)).scalar_one()
    cols: list[Cond] = []
    if period is not None:
        cols.append(_bucket(dialect, period).label("b"))
    if group is not None:
        keys, guards = _group_columns(dialect, group)
        cols.extend(keys)
        conds.extend(guards)
    sub = select(*cols).where(*conds).subquery()
    stmt = select(*sub.c, func.count().label("n")).group_by(*sub.c)
    if period is not None:
        stmt = stmt.order_by(sub.c.b)
    rows = list(conn.execute(stmt))
    if period is None:
        assert group is not None
        return _sum_by_key((_group_key(r, dialect, group), r.n) for r in rows)
    if group is None:
        return {_bucket_iso(r.b, period): r.n for r in rows}
    per_bucket: dict[str, list[tuple[Any, int]]] = {}
    for r in rows:
        per_bucket.setdefault(_bucket_iso(r.b, period), []).append((_group_key(r, dialect, group), r.n))
    return {bucket: _sum_by_key(pairs) for bucket, pairs in per_bucket.items()}


def _sum_by_key(pairs: Iterable[tuple[Any, int]]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for key, n in pairs:
        out[key] = out.get(key, 0) + n
    # Largest first; ties in the order of the key's JSON text, so both backends list them alike.
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], json.dumps(kv[0]))))


def aggregate(
    conn: Connection,
    fn: str,
    field: str,
    filter: Query | Filter | None = None,
    per: Per | None = None,
) -> Any:
    """``min``, ``max``, ``avg`` or ``sum`` of a numeric data field over matching events.

    Only events whose field holds a JSON number take part (strings such as ``"5"`` do not).

    Parameters:
        fn: ``min``, ``max``, ``avg`` or ``sum``.
        field: ``data.<path>``.
        filter: a Filter, a Query or ``None``.
        per: ``minute``, ``hour`` or ``day`` (UTC buckets), or ``None``.
    Raises:
        QueryError: an invalid function, field, filter or period.
    Returns:
        A number (``int`` when integral, ``avg`` always ``float``), ``None`` when no event has a
        numeric value; with ``per``, ``{bucket_start_iso: number}`` for buckets that have one.
        ``sum``/``avg`` are exact decimals on PostgreSQL and doubles on SQLite, so they agree to
        float rounding; ``min``/``max`` agree exactly.
    """
    if fn not in AGGREGATES:
        raise QueryError(f"fn must be one of {', '.join(AGGREGATES)}, not {str(fn)[:40]!r}", errors={"fn": "invalid"})
    path = parse_field(field, "field", columns=())
    assert not isinstance(path, str)
    period = check_per(per)
    dialect = dialect_of(conn)
    conds = where_clause(as_query(filter), dialect)
    if dialect == "postgresql":
        x = pg_at(events.c.data, path)
        conds.append(func.jsonb_typeof(x) == "number")
        number: Cond = cast(x, Numeric)
    else:
        conds.append(sqlite_type(events.c.data, path).in_(SQLITE_KINDS["number"]))
        number = sqlite_value(events.c.data, path)
    agg = getattr(func, fn)
    convert = (lambda v: None if v is None else float(v)) if fn == "avg" else to_number
    if period is None:
        return convert(conn.execute(select(agg(number)).where(*conds)).scalar_one())
    sub = select(_bucket(dialect, period).label("b"), number.label("v")).where(*conds).subquery()
    stmt = select(sub.c.b, agg(sub.c.v).label("r")).group_by(sub.c.b).order_by(sub.c.b)
    return {_bucket_iso(r.b, period): convert(r.r) for r in conn.execute(stmt)}


# ---------------------------------------------------------------- the store mixin


class SqlQueryMixin:
    """Query methods for a store class holding an ``sqlalchemy.Engine`` as ``self._engine``.

    Each call opens one connection, runs one statement and maps database failures to
    :class:`esf.errors.ServiceUnavailable`; invalid queries raise QueryError before connecting.
    """

    _engine: Engine

    @contextmanager
    def _query_connection(self) -> Iterator[Connection]:
        try:
            # A query may scan for as long as the server's statement timeout allows.
            with self._engine.connect() as conn, long_calls(conn):
                yield conn
        except (OperationalError, InterfaceError) as exc:
            raise ServiceUnavailable(
                f"the event store database cannot be reached ({type(exc.orig).__name__}); check it is running"
            ) from exc

    def query(self, query: Query | Filter | None = None) -> list[StoredEvent]:
        """Events matching ``query`` by position; see :func:`fetch`."""
        q = as_query(query)
        with self._query_connection() as conn:
            return fetch(conn, q)

    def query_page(self, query: Query | Filter | None = None, limit: int = 100, cursor: str | None = None) -> Page:
        """One page of events; see :func:`fetch_page`."""
        q, size, _ = as_query(query), check_limit(limit), parse_cursor(cursor)
        with self._query_connection() as conn:
            return fetch_page(conn, q, size, cursor)

    def count(self, filter: Query | Filter | None = None, *, by: str | None = None, per: Per | None = None) -> Any:
        """Count events, optionally by a field and/or per time bucket; see :func:`count`."""
        with self._query_connection() as conn:
            return count(conn, filter, by=by, per=per)

    def aggregate(self, fn: str, field: str, filter: Query | Filter | None = None, per: Per | None = None) -> Any:
        """``min``/``max``/``avg``/``sum`` of a numeric data field; see :func:`aggregate`."""
        with self._query_connection() as conn:
            return aggregate(conn, fn, field, filter, per=per)

    def followed_by(
        self,
        first: Filter,
        then: Filter,
        *,
        within: timedelta,
        by: str = "correlation_id",
        limit: int | None = None,
    ) -> list[tuple[StoredEvent, StoredEvent]]:
        """Pairs "A followed by B within D"; see :func:`followed_by`."""
        check_sequence(first, then, within, by)
        with self._query_connection() as conn:
            return followed_by(conn, first, then, within=within, by=by, limit=limit)

    def not_followed_by(
        self,
        first: Filter,
        then: Filter,
        *,
        within: timedelta,
        by: str = "correlation_id",
        now: datetime | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """ "A not followed by B within D" once D has passed; see :func:`not_followed_by`."""
        check_sequence(first, then, within, by)
        with self._query_connection() as conn:
            return not_followed_by(conn, first, then, within=within, by=by, now=now, limit=limit)
