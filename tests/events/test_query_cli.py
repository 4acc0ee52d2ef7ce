"""``esf events query``: the pure option parsing, and the command against a real SQLite store."""

from __future__ import annotations

import argparse
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from esf.plugins.sqlalchemy_events._query import SqlQueryMixin
from esf.plugins.sqlalchemy_events._schema import events, metadata
from sqlalchemy import create_engine, insert

from esf.cli._events_query import build_filter, execute_query, parse_time, parse_where, register_query
from esf.errors import QueryError, ValidationError
from esf.events._query import Q

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("data.user_id=123", Q.data("user_id") == 123),
        ("data.user.id = 123", Q.data("user.id") == 123),
        ('data.code="123"', Q.data("code") == "123"),
        ("data.status=paid", Q.data("status") == "paid"),
        ("data.name=o'neil", Q.data("name") == "o'neil"),
        ("data.ok=true", Q.data("ok") == True),  # noqa: E712
        ("data.gone=null", Q.data("gone") == None),  # noqa: E711
        ("data.amount!=2.5", Q.data("amount") != 2.5),
        ("data.amount<10", Q.data("amount") < 10),
        ("data.amount<=10", Q.data("amount") <= 10),
        ("data.amount>10", Q.data("amount") > 10),
        ("data.amount>=10", Q.data("amount") >= 10),
        ("data.note~urgent", Q.data("note").contains("urgent")),
        ("data.tags~5", Q.data("tags").contains(5)),
        ("data.user_id=[1, 2, 3]", Q.data("user_id").in_([1, 2, 3])),
        ("data.items.0.sku=x-1", Q.data("items.0.sku") == "x-1"),
        ("data.eq==x", Q.data("eq") == "=x"),
        ("data.user_id", Q.data("user_id").exists()),
        ("!data.user_id", ~Q.data("user_id").exists()),
        ("event_type=order.created", Q.type("order.created")),
        ("stream_id!=s-1", ~Q.stream("s-1")),
        ("correlation_id=c-9", Q.correlation("c-9")),
    ],
)
def test_where_expressions_become_typed_filters(text, want):
    assert parse_where(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "user_id=123",
        "data.=1",
        "data.a'b=1",
        "=1",
        "data.x<true",
        "data.x={}",
        "data.x=NaN",
        "data.x~[1]",
        "event_type<x",
        "event_type=5",
        "data.a;--=1",
        "",
    ],
)
def test_invalid_where_expressions_are_query_errors(text):
    with pytest.raises(QueryError):
        parse_where(text)


def test_times_are_iso_or_durations_before_now():
    assert parse_time("2026-03-01T10:00:00Z", NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_time("2026-03-01T10:00:00", NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_time("2026-03-01T11:00:00+01:00", NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_time("2026-03-01", NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("15m", NOW) == NOW - timedelta(minutes=15)
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    for bad in ("yesterday", "", "15 parsecs"):
        with pytest.raises(ValidationError):
            parse_time(bad, NOW)


def test_options_combine_into_one_filter():
    f = build_filter(
        types=["a", "b"], where=["data.x=1"], since="1h", until="2026-03-02T12:00:00Z", correlation_id="c", now=NOW
    )
    assert f == (Q.types("a", "b") & Q.correlation("c") & Q.between(NOW - timedelta(hours=1), NOW) & (Q.data("x") == 1))
    assert build_filter() is None
    assert build_filter(stream="s-1", now=NOW) == Q.stream("s-1")


# ---------------------------------------------------------------- the command on a real store


class Store(SqlQueryMixin):
    def __init__(self, engine):
        self._engine = engine


T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
DATA = [
    ("order.created", {"user_id": 1, "amount": 10}, "c-1", T0),
    ("payment.received", {"user_id": 1, "amount": 10}, "c-1", T0 + timedelta(minutes=3)),
    ("order.created", {"user_id": 2, "amount": 5.5, "note": "urgent please"}, "c-2", T0 + timedelta(hours=2)),
    ("order.created", {"user_id": "2"}, None, T0 + timedelta(days=1)),
]


@pytest.fixture
def store(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    metadata.create_all(engine)
    rows = [
        {
            "position": i,
            "event_id": str(uuid.uuid4()),
            "stream_id": "s-1",
            "stream_version": i,
            "event_type": t,
            "recorded_at": at,
            "monotonic_ns": i,
            "node": "n",
            "pid": 1,
            "correlation_id": c,
            "parent_id": None,
            "data": d,
            "metadata": {},
            "content_hash": "0" * 64,
        }
        for i, (t, d, c, at) in enumerate(DATA, start=1)
    ]
    with engine.begin() as conn:
        conn.execute(insert(events), rows)
    yield Store(engine)
    engine.dispose()


def run(store, *argv):
    parser = argparse.ArgumentParser(prog="esf events")
    register_query(parser.add_subparsers(dest="sub"))
    args = parser.parse_args(["query", *argv])
    args.app = None
    assert args.handler.__name__ == "run_query"
    out = io.StringIO()
    assert execute_query(store, args, out) == 0
    return out.getvalue()


def test_the_command_lists_matching_events_as_json(store):
    got = json.loads(run(store, "--type", "order.created", "--where", "data.user_id=2", "--json"))
    assert [e["position"] for e in got] == [3]
    assert got[0]["data"]["note"] == "urgent please"


def test_the_command_prints_one_line_per_event_newest_first(store):
    lines = run(store, "--where", "data.amount>=5", "--desc", "--limit", "2").splitlines()
    assert [int(line.split()[0]) for line in lines] == [3, 2]
    assert "corr=c-2" in lines[0] and '"note": "urgent please"' in lines[0]


def test_the_command_filters_by_time_correlation_and_contains(store):
    assert (
        json.loads(run(store, "--since", "2026-03-01T10:01:00Z", "--until", "2026-03-02", "--json"))[0]["position"] == 2
    )
    assert [e["position"] for e in json.loads(run(store, "--correlation-id", "c-1", "--json"))] == [1, 2]
    assert [e["position"] for e in json.loads(run(store, "--where", "data.note~urgent", "--json"))] == [3]


def test_the_command_counts_by_field_and_bucket(store):
    assert json.loads(run(store, "--count-by", "event_type", "--json")) == [
        {"key": "order.created", "count": 3},
        {"key": "payment.received", "count": 1},
    ]
    assert run(store, "--count-by", "data.user_id").splitlines() == ["1\t2", '"2"\t1', "2\t1"]
    assert json.loads(run(store, "--per", "day", "--json")) == [
        {"bucket": "2026-03-01T00:00:00+00:00", "count": 3},
        {"bucket": "2026-03-02T00:00:00+00:00", "count": 1},
    ]
    assert run(store, "--count-by", "correlation_id", "--per", "day").splitlines() == [
        "2026-03-01T00:00:00+00:00\tc-1\t2",
        "2026-03-01T00:00:00+00:00\tc-2\t1",
        "2026-03-02T00:00:00+00:00\t-\t1",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--where", "data.a'b=1"],
        ["--count-by", "recorded_at"],
        ["--limit", "0"],
        ["--since", "last tuesday"],
        ["--type", ""],
    ],
)
def test_invalid_options_fail_with_a_validation_error(store, argv):
    with pytest.raises(ValidationError):
        run(store, *argv)
