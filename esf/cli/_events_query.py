"""``esf events query``: filter, count and bucket stored events from the command line.

``esf events`` adds this command with :func:`register_query`. Parsing is pure
(:func:`parse_where`, :func:`parse_time`, :func:`build_filter`); the handler
only loads the Foundation and calls the store's query methods.

``--where`` takes ``FIELD OP VALUE`` with ``OP`` one of ``= != < <= > >= ~``
(``~`` is contains). ``FIELD`` is ``data.<path>``, or ``event_type``,
``stream_id``, ``correlation_id`` (with ``=``/``!=`` only). ``VALUE`` is
parsed as JSON when it parses (``123``, ``true``, ``null``, ``"123"``), else
taken as a plain string; a JSON list with ``=`` means "one of". A bare
``data.<path>`` means the field exists and ``!data.<path>`` that it does not.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from ..errors import QueryError, ValidationError
from ..events._model import StoredEvent
from ..events._query import Filter, Q, Query
from ..events._query_values import check_limit, check_per, parse_field
from ._common import load_foundation, parse_duration, print_json, too_deep

__all__ = ["QueryableEvents", "build_filter", "execute_query", "parse_time", "parse_where", "register_query"]

_WHERE = re.compile(r"^\s*(?P<field>[^\s=!<>~]+)\s*(?P<op>!=|<=|>=|=|<|>|~)(?P<value>.*)$", re.DOTALL)
_EXISTS = re.compile(r"^\s*(?P<neg>!?)\s*(?P<field>data\.[^\s=!<>~]+)\s*$")
_COLUMN_FILTERS = {"event_type": Q.type, "stream_id": Q.stream, "correlation_id": Q.correlation}
#: Default number of events printed.
DEFAULT_LIMIT = 100


class QueryableEvents(Protocol):
    """The part of the event store this command uses (``SqlQueryMixin`` provides it)."""

    def query(self, query: Query | Filter | None = None) -> list[StoredEvent]: ...

    def count(self, filter: Query | Filter | None = None, *, by: str | None = None, per: Any = None) -> Any: ...


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise too_deep("value") from None


def parse_where(text: str) -> Filter:
    """One ``--where`` expression as a filter (see the module docstring).

    Raises:
        QueryError: the expression, field, operator or value is invalid.
    """
    found = _EXISTS.match(text)
    if found:
        present: Filter = Q.data(found["field"][5:]).exists()
        return ~present if found["neg"] else present
    m = _WHERE.match(text)
    if not m:
        raise QueryError(
            f"--where {text[:80]!r}: expected FIELD OP VALUE with OP one of = != < <= > >= ~ "
            "(for example data.user_id=123)",
            errors={"where": "syntax"},
        )
    name, op = m["field"], m["op"]
    value: object = _value(m["value"])
    if name in _COLUMN_FILTERS:
        if op not in ("=", "!=") or not isinstance(value, str):
            raise QueryError(f"--where {name} takes = or != and a string value", errors={"where": name})
        column = _COLUMN_FILTERS[name](value)
        return column if op == "=" else ~column
    path = parse_field(name, "where", columns=())
    assert not isinstance(path, str)
    field = Q.data(".".join(str(seg) for seg in path))
    if op == "=":
        return field.in_(value) if isinstance(value, list) else field == value
    if op == "!=":
        return field != value
    if op == "~":
        return field.contains(value)
    if op == "<":
        return field < value
    if op == "<=":
        return field <= value
    if op == ">":
        return field > value
    return field >= value


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or a duration before ``now`` (``15m``, ``2h``, ``7d``).

    Raises:
        ValidationError: neither.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValidationError:
            raise ValidationError(
                f"{text!r} is neither an ISO 8601 time (2026-03-01T12:00:00Z) nor a duration (15m, 2h, 7d)"
            ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def build_filter(
    *,
    types: Sequence[str] = (),
    where: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    correlation_id: str | None = None,
    stream: str | None = None,
    now: datetime | None = None,
) -> Filter | None:
    """The filter for the command's options (``None`` when there are none); all of them must hold.

    Raises:
        QueryError, ValidationError: an invalid option.
    """
    moment = now or datetime.now(UTC)
    parts: list[Filter] = []
    if types:
        parts.append(Q.types(*types))
    if correlation_id is not None:
        parts.append(Q.correlation(correlation_id))
    if stream is not None:
        parts.append(Q.stream(stream))
    if since is not None or until is not None:
        parts.append(
            Q.between(
                None if since is None else parse_time(since, moment),
                None if until is None else parse_time(until, moment),
            )
        )
    parts.extend(parse_where(w) for w in where)
    if not parts:
        return None
    result = parts[0]
    for part in parts[1:]:
        result = result & part
    return result


def register_query(events_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``query`` to the ``esf events`` sub-commands."""
    p = events_subparsers.add_parser(
        "query",
        help="filter, count or bucket stored events",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--type", action="append", dest="types", default=[], metavar="T", help="event type (repeatable)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR", help="e.g. data.user_id=123 (repeatable)")
    p.add_argument("--since", metavar="ISO|DURATION", help="recorded at or after (2026-03-01T00:00Z, 15m, 7d)")
    p.add_argument("--until", metavar="ISO|DURATION", help="recorded before")
    p.add_argument("--correlation-id", metavar="C")
    p.add_argument("--stream", metavar="S")
    p.add_argument("--count-by", metavar="FIELD", help="event_type, stream_id, correlation_id or data.<path>")
    p.add_argument("--per", choices=["minute", "hour", "day"], help="count per UTC time bucket")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"events to print (default {DEFAULT_LIMIT})")
    p.add_argument("--desc", action="store_true", help="newest first")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_query)


def run_query(args: argparse.Namespace) -> int:
    """Handler: the Foundation's event store answers the query."""
    return execute_query(load_foundation(args.app).events, args)


def execute_query(store: QueryableEvents, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the query described by ``args`` against ``store`` and print the answer.

    Raises:
        QueryError, ValidationError: invalid options (before the store is called).
    Returns:
        The exit code (0).
    """
    out = out or sys.stdout
    filter_ = build_filter(
        types=args.types,
        where=args.where,
        since=args.since,
        until=args.until,
        correlation_id=args.correlation_id,
        stream=args.stream,
    )
    if args.count_by is not None or args.per is not None:
        if args.count_by is not None:
            parse_field(args.count_by)
        check_per(args.per)
        _print_counts(store.count(filter_, by=args.count_by, per=args.per), args, out)
        return 0
    query = Query(filter_, order="desc" if args.desc else "asc", limit=check_limit(args.limit))
    found = store.query(query)
    if args.json:
        _json([e.to_dict() for e in found], out)
        return 0
    for e in found:
        data = json.dumps(e.to_dict()["data"], sort_keys=True, ensure_ascii=False)
        corr = f" corr={e.correlation_id}" if e.correlation_id else ""
        print(
            f"{e.position:>10}  {e.recorded_at.isoformat()}  {e.event_type}  stream={e.stream_id}{corr}  {data}",
            file=out,
        )
    print(f"({len(found)} events)", file=sys.stderr)
    return 0


def _print_counts(result: Any, args: argparse.Namespace, out: TextIO) -> None:
    rows: list[dict[str, Any]]
    if args.count_by is None and args.per is None:
        rows = [{"count": result}]
    elif args.per is None:
        rows = [{"key": k, "count": n} for k, n in result.items()]
    elif args.count_by is None:
        rows = [{"bucket": b, "count": n} for b, n in result.items()]
    else:
        rows = [{"bucket": b, "key": k, "count": n} for b, keys in result.items() for k, n in keys.items()]
    if args.json:
        _json(rows, out)
        return
    for row in rows:
        cells = [row.get("bucket"), _show_key(row["key"], args.count_by) if "key" in row else None, row["count"]]
        print("\t".join(str(c) for c in cells if c is not None), file=out)


def _show_key(key: Any, by: str) -> str:
    # Column values print as they are; data values as JSON, so that "1" and 1 stay apart.
    if by.startswith("data."):
        return json.dumps(key, ensure_ascii=False)
    return "-" if key is None else str(key)


def _json(value: Any, out: TextIO) -> None:
    if out is sys.stdout:
        print_json(value)
    else:
        print(json.dumps(value, indent=2, sort_keys=True, default=str), file=out)
