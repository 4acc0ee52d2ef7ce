"""The query DSL: filters are immutable values, checked when built (no database here)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from esf.errors import QueryError, ValidationError
from esf.events._query import (
    And,
    FieldCompare,
    FieldContains,
    FieldExists,
    FieldIn,
    Not,
    Or,
    Q,
    Query,
    TimeBetween,
    TypeIs,
    bucket_start,
    parse_cursor,
)
from esf.events._query_values import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_NODES,
    MAX_IN_VALUES,
    MAX_PATH_DEPTH,
    parse_field,
    parse_path,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_query_error_is_a_validation_error_with_a_stable_code():
    assert issubclass(QueryError, ValidationError)
    assert QueryError.code == "invalid_query"


def test_data_paths_split_into_keys_and_array_indexes():
    assert parse_path("user.id") == ("user", "id")
    assert parse_path("items.0.sku") == ("items", 0, "sku")
    assert parse_path("_a.B_9") == ("_a", "B_9")
    assert parse_path(".".join(["k"] * MAX_PATH_DEPTH)) == ("k",) * MAX_PATH_DEPTH


@pytest.mark.parametrize(
    "path",
    [
        "",
        "user.",
        ".user",
        "user..id",
        "9lives",
        "01",
        "-1",
        "a b",
        "user-id",
        "a'b",
        'a"b',
        "$.a",
        "a/b",
        "a;--",
        "a\x00",
        "é",
        "x" * 65,
        "1234567890",
        ".".join(["k"] * (MAX_PATH_DEPTH + 1)),
    ],
)
def test_an_invalid_data_path_is_rejected_when_the_filter_is_built(path):
    # Given a path that is not a plain identifier chain, When the field is built, Then QueryError.
    with pytest.raises(QueryError):
        Q.data(path)


@pytest.mark.parametrize("path", [123, None, b"user", ("user", "id"), 1.5])
def test_a_data_path_that_is_not_a_string_is_rejected(path):
    with pytest.raises(QueryError):
        Q.data(path)


def test_field_operators_build_typed_filter_values():
    f = Q.data("user.id")
    assert (f == 1) == FieldCompare(("user", "id"), "eq", 1)
    assert (f != "x") == Not(FieldCompare(("user", "id"), "eq", "x"))
    assert (f < 2) == FieldCompare(("user", "id"), "lt", 2)
    assert (f <= 2.5) == FieldCompare(("user", "id"), "le", 2.5)
    assert (f > "a") == FieldCompare(("user", "id"), "gt", "a")
    assert (f >= -3) == FieldCompare(("user", "id"), "ge", -3)
    assert f.in_([1, "1", None, True]) == FieldIn(("user", "id"), (1, "1", None, True))
    assert f.exists() == FieldExists(("user", "id"))
    assert f.contains("abc") == FieldContains(("user", "id"), "abc")


def test_combinators_flatten_and_double_negation_cancels():
    a, b, c = Q.type("a"), Q.stream("s"), Q.correlation("c")
    assert (a & b & c) == And((a, b, c))
    assert (a | b | c) == Or((a, b, c))
    assert ~~a == a
    assert (a & (b | c)) == And((a, Or((b, c))))


def test_filters_are_frozen_and_hashable_values():
    f = Q.type("a") & (Q.data("x") == 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.parts = ()  # type: ignore[misc]
    assert hash(f) == hash(Q.type("a") & (Q.data("x") == 1))
    assert Q.types("a", "b") == TypeIs(("a", "b"))


def test_using_and_or_not_on_filters_instead_of_operators_is_an_error():
    # Python's `and` would silently drop a filter; refuse the truth test instead.
    with pytest.raises(QueryError):
        bool(Q.type("a"))
    with pytest.raises(QueryError):
        _ = Q.type("a") and Q.type("b")
    with pytest.raises(QueryError):
        bool(Q.data("x"))


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        b"x",
        object(),
        {"a": 1},
        [1],
        (1,),
        2**63,
        -(2**63) - 1,
        "a\x00b",
        "\ud800",
        datetime.now(UTC),
        1j,
    ],
)
def test_a_value_that_is_not_a_json_scalar_is_rejected(value):
    with pytest.raises(QueryError):
        _ = Q.data("x") == value
    with pytest.raises(QueryError):
        Q.data("x").contains(value)
    with pytest.raises(QueryError):
        Q.data("x").in_([value])


@pytest.mark.parametrize("value", [None, True, False])
def test_ordering_operators_take_only_numbers_and_strings(value):
    with pytest.raises(QueryError):
        _ = Q.data("x") < value
    with pytest.raises(QueryError):
        _ = Q.data("x") >= value


def test_in_takes_a_bounded_list_of_scalars():
    assert Q.data("x").in_([]) == FieldIn(("x",), ())
    assert Q.data("x").in_(range(3)) == FieldIn(("x",), (0, 1, 2))
    for bad in ("abc", 5, {"a": 1}, None, [[1]], [1] * (MAX_IN_VALUES + 1)):
        with pytest.raises(QueryError):
            Q.data("x").in_(bad)


def test_ints_and_strs_subclasses_are_normalised_to_plain_values():
    import enum

    class Color(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    assert (Q.data("c") == Color.RED).value.__class__ is str
    assert (Q.data("l") == Level.HIGH).value.__class__ is int
    assert (Q.data("b") == True).value is True  # noqa: E712


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("yesterday", 5),
        (datetime(2026, 1, 1), None),
        (None, datetime(2026, 1, 1)),
        (None, None),
        (T0, T0 - timedelta(seconds=1)),
        (1700000000, T0),
    ],
)
def test_between_requires_timezone_aware_datetimes_in_order(start, end):
    with pytest.raises(QueryError):
        Q.between(start, end)


def test_between_converts_to_utc_and_accepts_an_open_side():
    paris = timezone(timedelta(hours=1))
    f = Q.between(datetime(2026, 3, 1, 1, 0, tzinfo=paris), None)
    assert f == TimeBetween(T0, None)
    assert f.start.tzinfo is UTC


@pytest.mark.parametrize(
    "build",
    [
        lambda: Q.type(""),
        lambda: Q.type(5),
        lambda: Q.type("x" * 201),
        lambda: Q.types(),
        lambda: Q.types("a", None),
        lambda: Q.stream(None),
        lambda: Q.correlation(b"c"),
        lambda: Q.correlation("a\x00"),
        lambda: Q.after_position(-1),
        lambda: Q.after_position("3"),
        lambda: Q.after_position(True),
        lambda: Q.type("a") & "b",
        lambda: Q.type("a") | 3,
        lambda: And((Q.type("a"), "x")),
    ],
)
def test_wrong_argument_types_are_query_errors(build):
    with pytest.raises(QueryError):
        build()


def test_a_filter_tree_is_bounded_in_size_and_depth():
    f = Q.type("a")
    for _ in range(MAX_FILTER_DEPTH - 1):
        f = Not(f)
    with pytest.raises(QueryError):
        Not(f)
    with pytest.raises(QueryError):
        And(tuple(Q.type("a") for _ in range(MAX_FILTER_NODES)))


def test_a_query_validates_order_limit_and_bounds():
    q = Q.type("a").query(order="desc", limit=10, after=3, before=9)
    assert q == Query(Q.type("a"), "desc", 10, 3, 9)
    for kwargs in ({"order": "up"}, {"limit": 0}, {"limit": True}, {"after": -1}, {"before": "9"}, {"filter": "x"}):
        with pytest.raises(QueryError):
            Query(**kwargs)


def test_cursors_are_position_strings_and_anything_else_is_rejected():
    assert parse_cursor(None) is None
    assert parse_cursor("42") == 42
    for bad in ("", "-1", "4x", "1;drop table esf_events", 42, "9" * 20):
        with pytest.raises(QueryError):
            parse_cursor(bad)


def test_group_fields_are_columns_or_data_paths():
    assert parse_field("event_type") == "event_type"
    assert parse_field("data.user.id") == ("user", "id")
    for bad in ("position", "data.", "data.a'b", "recorded_at; --", None, 3):
        with pytest.raises(QueryError):
            parse_field(bad)


def test_bucket_starts_are_utc_iso_strings():
    t = datetime(2026, 3, 1, 13, 47, 12, 345, tzinfo=UTC)
    assert bucket_start(t, "minute") == "2026-03-01T13:47:00+00:00"
    assert bucket_start(t, "hour") == "2026-03-01T13:00:00+00:00"
    assert bucket_start(t, "day") == "2026-03-01T00:00:00+00:00"
    assert bucket_start(t.astimezone(timezone(timedelta(hours=-5))), "day") == "2026-03-01T00:00:00+00:00"
