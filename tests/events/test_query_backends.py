"""Every query operator on PostgreSQL and SQLite against the Python model of the same rows.

The rows are inserted directly with SQLAlchemy Core (positions 1..n); each
case states its expectation as a plain Python predicate over the event, and
both backends must return exactly the events the predicate selects.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from esf.plugins.sqlalchemy_events._query import (
    SqlQueryMixin,
    aggregate,
    count,
    fetch,
    fetch_page,
    followed_by,
    not_followed_by,
    row_to_event,
)
from esf.plugins.sqlalchemy_events._schema import events, metadata
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, func, insert, select

from esf.errors import QueryError, ServiceUnavailable
from esf.events._model import StoredEvent
from esf.events._query import Q, Query, bucket_start
from esf.events._query_values import json_kind, parse_field, resolve
from tests.servers import require_port

PG_ADMIN_URL = os.environ.get("ESF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)

# ---------------------------------------------------------------- dataset

STATUSES = ["paid", "pending", 'it\'s "quoted"', "Ünïcødé ✓", "", "100%_off", "a\\b", "PAID", "1"]
TAG_SETS = [["a", "b"], ["b"], [], [1, 2, 3], ["a", 1, True, None], [["a"]], [{"a": 1}], [1.5, "x"]]
TYPES = ["order.created", "payment.received", "order.shipped", "user.signup", "audit.note"]
FLOW_NEXT = {"order.created": "payment.received", "payment.received": "order.shipped", "user.signup": "order.created"}


def make_data(rng: random.Random, i: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if rng.random() < 0.9:
        data["user_id"] = rng.choice([1, 2, 3, 42, -7, 0, 123, 2**40])
    if rng.random() < 0.8:
        data["amount"] = rng.choice([0, 1, 1.0, 2.5, 10, 99.99, -3.25, 1e-7, 1e15, 0.1])
    if rng.random() < 0.8:
        data["status"] = rng.choice(STATUSES)
    if rng.random() < 0.5:
        data["flag"] = rng.choice([True, False, None, 1, 0, "true"])
    if rng.random() < 0.6:
        data["tags"] = rng.choice(TAG_SETS)
    if rng.random() < 0.6:
        data["user"] = {"id": rng.choice([1, 2, "1", None]), "name": rng.choice(["ann", "bob", "o'neil"])}
    if rng.random() < 0.4:
        data["items"] = [
            {"sku": rng.choice(["x-1", "y-2"]), "qty": rng.randint(0, 3)} for _ in range(rng.randint(0, 3))
        ]
    if rng.random() < 0.4:
        data["mixed"] = rng.choice([5, "5", [5], {"0": 5}, None, True, 5.0])
    if i % 17 == 0:
        data = {}
    return data


def make_rows(n: int = 90, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    t = T0
    open_flows: list[str] = []
    last_type: dict[str, str] = {}
    for i in range(1, n + 1):
        # Mostly small steps, some hours; a rare step back (clock skew between nodes).
        t += timedelta(seconds=rng.choice([0.5, 3, 29.999999, 61, 450, 3600 * 2.5]), microseconds=rng.randint(0, 999))
        recorded = t - timedelta(seconds=5) if i % 23 == 0 else t
        # Correlation ids come in flows of nearby events (order -> payment -> shipping ...).
        if open_flows and rng.random() < 0.6:
            corr = rng.choice(open_flows[-3:])
            event_type = FLOW_NEXT.get(last_type[corr], rng.choice(TYPES)) if rng.random() < 0.6 else rng.choice(TYPES)
        else:
            corr = rng.choice([None, f"c-{i}", f"c-{i}"])
            event_type = rng.choice(TYPES)
            if corr is not None:
                open_flows.append(corr)
        if corr is not None:
            last_type[corr] = event_type
        rows.append(
            {
                "position": i,
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "stream_id": f"s-{rng.randint(1, 4)}",
                "stream_version": i,
                "event_type": event_type,
                "recorded_at": recorded,
                "monotonic_ns": i * 1000,
                "node": "n1",
                "pid": 1,
                "correlation_id": corr,
                "parent_id": None,
                "data": make_data(rng, i),
                "metadata": {"i": i},
                "content_hash": "0" * 64,
            }
        )
    return rows


def insert_rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(events), rows)


def as_stored(rows: list[dict[str, Any]]) -> list[StoredEvent]:
    fields = [f for f in StoredEvent.__dataclass_fields__]
    return [StoredEvent(**{k: r[k] for k in fields}) for r in rows]


ROWS = make_rows()
MODEL = as_stored(ROWS)

# ---------------------------------------------------------------- backends


@pytest.fixture(scope="module")
def postgresql_engine() -> Iterator[Engine]:
    """A module-wide PostgreSQL database holding ROWS (one database for the whole matrix)."""
    require_port(5432, "PostgreSQL")
    import psycopg

    name = f"esf_test_q_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(f"{base}/{name}")
    try:
        insert_rows(engine, ROWS)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('q') / 'events.db'}")
    insert_rows(engine, ROWS)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")


def positions(found: list[StoredEvent]) -> list[int]:
    return [e.position for e in found]


def expected(pred: Any) -> list[int]:
    return [e.position for e in MODEL if pred(e)]


def d(e: StoredEvent) -> dict[str, Any]:
    return e.data  # type: ignore[return-value]


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------- the matrix

NOTHING = object()


def get(e: StoredEvent, *path: Any) -> Any:
    cur: Any = e.data
    for seg in path:
        if isinstance(seg, int):
            if not isinstance(cur, list) or seg >= len(cur):
                return NOTHING
        elif not isinstance(cur, dict) or seg not in cur:
            return NOTHING
        cur = cur[seg]
    return cur


def same(v: Any, w: Any) -> bool:
    """Typed JSON equality: bool only equals bool, numbers numerically, no containers."""
    if isinstance(v, bool) or isinstance(w, bool):
        return isinstance(v, bool) and isinstance(w, bool) and v == w
    if is_num(v) and is_num(w):
        return v == w
    if v is None or w is None:
        return v is None and w is None
    return isinstance(v, str) and isinstance(w, str) and v == w


CASES: list[tuple[str, Any, Any]] = [
    ("type", Q.type("order.created"), lambda e: e.event_type == "order.created"),
    ("types", Q.types("order.created", "user.signup"), lambda e: e.event_type in ("order.created", "user.signup")),
    ("stream", Q.stream("s-2"), lambda e: e.stream_id == "s-2"),
    ("correlation", Q.correlation("c-3"), lambda e: e.correlation_id == "c-3"),
    ("not-correlation", ~Q.correlation("c-3"), lambda e: e.correlation_id != "c-3"),
    ("after-position", Q.after_position(40), lambda e: e.position > 40),
    (
        "between",
        Q.between(T0 + timedelta(hours=5), T0 + timedelta(hours=30)),
        lambda e: T0 + timedelta(hours=5) <= e.recorded_at < T0 + timedelta(hours=30),
    ),
    ("since", Q.between(T0 + timedelta(hours=20), None), lambda e: e.recorded_at >= T0 + timedelta(hours=20)),
    ("until", Q.between(None, T0 + timedelta(hours=20)), lambda e: e.recorded_at < T0 + timedelta(hours=20)),
    ("eq-int", Q.data("user_id") == 42, lambda e: same(get(e, "user_id"), 42)),
    ("eq-big-int", Q.data("user_id") == 2**40, lambda e: same(get(e, "user_id"), 2**40)),
    ("eq-int-matches-float", Q.data("amount") == 1, lambda e: same(get(e, "amount"), 1)),
    ("eq-float", Q.data("amount") == 0.1, lambda e: same(get(e, "amount"), 0.1)),
    ("eq-tiny-float", Q.data("amount") == 1e-7, lambda e: same(get(e, "amount"), 1e-7)),
    ("eq-str", Q.data("status") == "paid", lambda e: same(get(e, "status"), "paid")),
    ("eq-str-quotes", Q.data("status") == 'it\'s "quoted"', lambda e: get(e, "status") == 'it\'s "quoted"'),
    ("eq-str-unicode", Q.data("status") == "Ünïcødé ✓", lambda e: get(e, "status") == "Ünïcødé ✓"),
    ("eq-str-backslash", Q.data("status") == "a\\b", lambda e: get(e, "status") == "a\\b"),
    ("eq-empty-str", Q.data("status") == "", lambda e: get(e, "status") == ""),
    ("eq-str-is-not-number", Q.data("status") == 1, lambda e: same(get(e, "status"), 1)),
    ("eq-true-is-not-1", Q.data("flag") == True, lambda e: get(e, "flag") is True),  # noqa: E712
    ("eq-1-is-not-true", Q.data("flag") == 1, lambda e: same(get(e, "flag"), 1)),
    ("eq-false", Q.data("flag") == False, lambda e: get(e, "flag") is False),  # noqa: E712
    ("eq-null", Q.data("flag") == None, lambda e: get(e, "flag") is None),  # noqa: E711
    ("eq-nested", Q.data("user.id") == 1, lambda e: same(get(e, "user", "id"), 1)),
    ("eq-nested-str", Q.data("user.id") == "1", lambda e: get(e, "user", "id") == "1"),
    ("eq-nested-null", Q.data("user.id") == None, lambda e: get(e, "user", "id") is None),  # noqa: E711
    ("eq-index", Q.data("items.0.sku") == "x-1", lambda e: get(e, "items", 0, "sku") == "x-1"),
    ("eq-index-2", Q.data("items.2.qty") == 0, lambda e: same(get(e, "items", 2, "qty"), 0)),
    ("index-on-scalar", Q.data("mixed.0") == 5, lambda e: same(get(e, "mixed", 0), 5)),
    ("eq-on-container-never", Q.data("mixed") == 5, lambda e: same(get(e, "mixed"), 5)),
    ("ne-str", Q.data("status") != "paid", lambda e: not same(get(e, "status"), "paid")),
    ("ne-int", Q.data("user_id") != 42, lambda e: not same(get(e, "user_id"), 42)),
    ("lt-int", Q.data("user_id") < 3, lambda e: is_num(get(e, "user_id")) and get(e, "user_id") < 3),
    ("le-float", Q.data("amount") <= 1.0, lambda e: is_num(get(e, "amount")) and get(e, "amount") <= 1.0),
    ("gt-float", Q.data("amount") > 2.5, lambda e: is_num(get(e, "amount")) and get(e, "amount") > 2.5),
    ("ge-neg", Q.data("amount") >= -3.25, lambda e: is_num(get(e, "amount")) and get(e, "amount") >= -3.25),
    ("gt-big", Q.data("amount") > 1e14, lambda e: is_num(get(e, "amount")) and get(e, "amount") > 1e14),
    (
        "lt-str-codepoint",
        Q.data("status") < "a",
        lambda e: isinstance(get(e, "status"), str) and get(e, "status") < "a",
    ),
    ("ge-str", Q.data("status") >= "p", lambda e: isinstance(get(e, "status"), str) and get(e, "status") >= "p"),
    (
        "gt-str-unicode",
        Q.data("status") > "z",
        lambda e: isinstance(get(e, "status"), str) and get(e, "status") > "z",
    ),
    (
        "lt-str-vs-number-field",
        Q.data("flag") < "z",
        lambda e: isinstance(get(e, "flag"), str) and get(e, "flag") < "z",
    ),
    (
        "gt-index",
        Q.data("items.1.qty") > 1,
        lambda e: is_num(get(e, "items", 1, "qty")) and get(e, "items", 1, "qty") > 1,
    ),
    (
        "in-mixed",
        Q.data("flag").in_([True, 0, "true"]),
        lambda e: any(same(get(e, "flag"), v) for v in (True, 0, "true")),
    ),
    ("in-ints", Q.data("user_id").in_([1, 2, 3]), lambda e: any(same(get(e, "user_id"), v) for v in (1, 2, 3))),
    ("in-empty", Q.data("user_id").in_([]), lambda e: False),
    ("in-nested", Q.data("user.name").in_(["o'neil", "x"]), lambda e: get(e, "user", "name") in ("o'neil", "x")),
    ("in-index", Q.data("items.0.sku").in_(["y-2"]), lambda e: get(e, "items", 0, "sku") == "y-2"),
    ("not-in", ~Q.data("user_id").in_([1, 2]), lambda e: not any(same(get(e, "user_id"), v) for v in (1, 2))),
    ("exists", Q.data("flag").exists(), lambda e: get(e, "flag") is not NOTHING),
    ("exists-null-nested", Q.data("user.id").exists(), lambda e: get(e, "user", "id") is not NOTHING),
    ("exists-index", Q.data("items.1").exists(), lambda e: get(e, "items", 1) is not NOTHING),
    ("not-exists", ~Q.data("status").exists(), lambda e: get(e, "status") is NOTHING),
    (
        "contains-substring",
        Q.data("status").contains("ai"),
        lambda e: isinstance(get(e, "status"), str) and "ai" in get(e, "status"),
    ),
    (
        "contains-percent-underscore-literal",
        Q.data("status").contains("%_"),
        lambda e: isinstance(get(e, "status"), str) and "%_" in get(e, "status"),
    ),
    (
        "contains-quote",
        Q.data("status").contains("'s \""),
        lambda e: isinstance(get(e, "status"), str) and "'s \"" in get(e, "status"),
    ),
    (
        "contains-unicode",
        Q.data("status").contains("ø"),
        lambda e: isinstance(get(e, "status"), str) and "ø" in get(e, "status"),
    ),
    (
        "contains-empty-string",
        Q.data("status").contains(""),
        lambda e: isinstance(get(e, "status"), str) or (isinstance(get(e, "status"), list) and "" in get(e, "status")),
    ),
    (
        "contains-element-str",
        Q.data("tags").contains("a"),
        lambda e: isinstance(get(e, "tags"), list) and any(same(t, "a") for t in get(e, "tags")),
    ),
    (
        "contains-element-int",
        Q.data("tags").contains(1),
        lambda e: isinstance(get(e, "tags"), list) and any(same(t, 1) for t in get(e, "tags")),
    ),
    (
        "contains-element-float-equal-int",
        Q.data("tags").contains(2.0),
        lambda e: isinstance(get(e, "tags"), list) and any(same(t, 2) for t in get(e, "tags")),
    ),
    (
        "contains-element-true",
        Q.data("tags").contains(True),
        lambda e: isinstance(get(e, "tags"), list) and any(same(t, True) for t in get(e, "tags")),
    ),
    (
        "contains-element-null",
        Q.data("tags").contains(None),
        lambda e: isinstance(get(e, "tags"), list) and any(t is None for t in get(e, "tags")),
    ),
    (
        "contains-on-number-field",
        Q.data("mixed").contains(5),
        lambda e: isinstance(get(e, "mixed"), list) and any(same(t, 5) for t in get(e, "mixed")),
    ),
    (
        "contains-nested-array",
        Q.data("items.0.sku").contains("-"),
        lambda e: isinstance(get(e, "items", 0, "sku"), str) and "-" in get(e, "items", 0, "sku"),
    ),
    (
        "and",
        Q.type("order.created") & (Q.data("user_id") > 0),
        lambda e: e.event_type == "order.created" and is_num(get(e, "user_id")) and get(e, "user_id") > 0,
    ),
    (
        "or",
        Q.type("audit.note") | (Q.data("status") == "paid") | Q.correlation("c-1"),
        lambda e: e.event_type == "audit.note" or get(e, "status") == "paid" or e.correlation_id == "c-1",
    ),
    (
        "not-of-and",
        ~(Q.stream("s-1") & (Q.data("amount") >= 10)),
        lambda e: not (e.stream_id == "s-1" and is_num(get(e, "amount")) and get(e, "amount") >= 10),
    ),
    (
        "not-of-missing-compare",
        ~(Q.data("amount") < 5),
        lambda e: not (is_num(get(e, "amount")) and get(e, "amount") < 5),
    ),
    (
        "nested-combinators",
        (Q.types("order.created", "order.shipped") | ~Q.data("tags").exists()) & ~(Q.data("flag") == None),  # noqa: E711
        lambda e: (
            (e.event_type in ("order.created", "order.shipped") or get(e, "tags") is NOTHING)
            and get(e, "flag") is not None
        ),
    ),
]


@pytest.mark.parametrize(("name", "filter_", "pred"), CASES, ids=[c[0] for c in CASES])
def test_every_operator_returns_exactly_the_events_of_the_python_model(engine, name, filter_, pred):
    # Given the same rows on both backends, When the filter runs, Then the model's events come back in order.
    want = expected(pred)
    assert [e.position for e in MODEL if filter_.matches(e)] == want, "the DSL's own model disagrees"
    with engine.connect() as conn:
        assert positions(fetch(conn, filter_)) == want


def test_the_dataset_exercises_every_case_non_trivially():
    # A case that selects nothing or everything would prove little, except the deliberate negatives,
    # which have near misses in the data (the string "1" for the number 1).
    trivial = [name for name, _, pred in CASES if len(expected(pred)) in (0, len(MODEL))]
    assert trivial == ["eq-str-is-not-number", "in-empty"]
    assert any(get(e, "status") == "1" for e in MODEL)


def test_fetched_events_are_the_stored_values(engine):
    with engine.connect() as conn:
        found = fetch(conn, None)
    assert found == MODEL
    assert all(e.recorded_at.tzinfo is UTC for e in found)


def test_row_to_event_reads_a_raw_row(engine):
    with engine.connect() as conn:
        row = conn.execute(select(*[events.c[f] for f in StoredEvent.__dataclass_fields__]).limit(1)).one()
    assert row_to_event(row) == MODEL[0]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_order_limit_and_position_bounds(engine, order):
    q = Query(Q.data("user_id").exists(), order=order, limit=7, after=10, before=80)
    want = [e.position for e in MODEL if q.matches(e)]
    want = (want if order == "asc" else want[::-1])[:7]
    with engine.connect() as conn:
        assert positions(fetch(conn, q)) == want


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("size", [1, 4, 1000])
def test_pages_walk_every_matching_event_once_in_order(engine, order, size):
    q = Query(~Q.type("audit.note"), order=order, after=3)
    want = [e.position for e in MODEL if q.matches(e)]
    want = want if order == "asc" else want[::-1]
    seen: list[int] = []
    cursor = None
    with engine.connect() as conn:
        for _ in range(len(MODEL) + 2):
            page = fetch_page(conn, q, size, cursor)
            assert len(page.events) <= size
            seen.extend(positions(list(page.events)))
            cursor = page.next_cursor
            if cursor is None:
                break
    assert seen == want


def test_a_forged_cursor_is_rejected_before_any_sql(engine):
    with engine.connect() as conn, pytest.raises(QueryError):
        fetch_page(conn, None, 10, "1 OR 1=1")


def test_the_table_is_intact_after_the_matrix(engine):
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == len(MODEL)


# ---------------------------------------------------------------- hostile input (property)


NASTY = [
    "'",
    '"',
    "$",
    "/",
    ";--",
    "\x00",
    "'; DROP TABLE esf_events; --",
    "$.a",
    "a') OR 1=1 --",
    "é",
    "\\",
    "%",
    "_",
    "{}",
    "[0]",
    "user_id' --",
    '"user_id"',
    "\u202e",
    "🙂",
    "*/",
    "/*",
    "\n",
]
REAL_PATHS = [
    "user_id",
    "status",
    "user.id",
    "user.name",
    "items.0.sku",
    "items.1.qty",
    "tags",
    "mixed",
    "mixed.0",
    "flag",
    "amount",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(),
    st.sampled_from(NASTY),
    st.sampled_from(STATUSES),
    st.sampled_from([0, 1, 2, 3, 42, 1.0, 0.1, 2.5, "a", "1"]),
)
hostile_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    st.binary(max_size=5),
    st.tuples(scalars),
    st.just(object()),
)
hostile_paths = st.one_of(
    st.sampled_from(REAL_PATHS),
    st.text(),
    st.lists(
        st.one_of(st.sampled_from(NASTY), st.sampled_from(REAL_PATHS), st.text(max_size=4)), min_size=1, max_size=4
    ).map(".".join),
    st.integers(),
    st.none(),
    st.binary(max_size=5),
)
OPS = ["eq", "ne", "lt", "le", "gt", "ge", "in", "exists", "contains", "type", "stream", "correlation"]


def build(op: str, path: Any, value: Any) -> Any:
    if op == "type":
        return Q.type(value)
    if op == "stream":
        return Q.stream(value)
    if op == "correlation":
        return Q.correlation(value)
    f = Q.data(path)
    if op == "in":
        return f.in_(value)
    if op == "exists":
        return f.exists()
    if op == "contains":
        return f.contains(value)
    return {"eq": f.__eq__, "ne": f.__ne__, "lt": f.__lt__, "le": f.__le__, "gt": f.__gt__, "ge": f.__ge__}[op](value)


valid_paths = st.one_of(
    st.sampled_from(REAL_PATHS),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,4}(\.([A-Za-z_][A-Za-z0-9_]{0,3}|[0-3])){0,3}", fullmatch=True),
)


def check_against_model(sqlite_engine, postgresql_engine, op, path, value, negate):
    """Build; on QueryError stop; else both backends must return the model's events."""
    # Given arbitrary strings as paths and arbitrary values, When the filter is built,
    # Then the only possible failure is QueryError, raised before any SQL runs.
    try:
        f = build(op, path, value)
    except QueryError:
        event("rejected")
        return
    event(f"built {op}")
    f = ~f if negate else f
    # And when it builds, both backends return exactly the model's events (no injection, no crash).
    want = [e.position for e in MODEL if f.matches(e)]
    for engine in (sqlite_engine, postgresql_engine):
        with engine.connect() as conn:
            assert positions(fetch(conn, f)) == want, engine.dialect.name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), path=hostile_paths, value=hostile_values, negate=st.booleans())
def test_hostile_paths_and_values_either_fail_validation_or_match_the_model(
    sqlite_engine, postgresql_engine, op, path, value, negate
):
    check_against_model(sqlite_engine, postgresql_engine, op, path, value, negate)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), path=valid_paths, value=scalars, negate=st.booleans())
def test_nasty_values_on_valid_paths_match_the_model_on_both_backends(
    sqlite_engine, postgresql_engine, op, path, value, negate
):
    # Same property, with paths that validate, so that most filters build and run.
    if op == "in":
        value = [value, "paid", 1]
    check_against_model(sqlite_engine, postgresql_engine, op, path, value, negate)


def test_the_table_and_schema_are_intact_after_hostile_queries(sqlite_engine, postgresql_engine):
    for engine in (sqlite_engine, postgresql_engine):
        with engine.connect() as conn:
            assert fetch(conn, None) == MODEL


# ---------------------------------------------------------------- aggregations


def model_key(e: StoredEvent, by: str) -> Any:
    field = parse_field(by)
    if isinstance(field, str):
        return getattr(e, field)
    value = resolve(e.data, field)
    return value if json_kind(value) in ("null", "boolean", "number", "string") else NOTHING


def model_count(f: Any = None, by: str | None = None, per: str | None = None) -> Any:
    chosen = [e for e in MODEL if f is None or f.matches(e)]
    if by is not None:
        chosen = [e for e in chosen if model_key(e, by) is not NOTHING]
    if by is None and per is None:
        return len(chosen)

    def tally(items: list[StoredEvent]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for e in items:
            out[model_key(e, by)] = out.get(model_key(e, by), 0) + 1  # type: ignore[arg-type]
        return out

    if per is None:
        return tally(chosen)
    buckets: dict[str, list[StoredEvent]] = {}
    for e in chosen:
        buckets.setdefault(bucket_start(e.recorded_at, per), []).append(e)  # type: ignore[arg-type]
    if by is None:
        return {k: len(v) for k, v in sorted(buckets.items())}
    return {k: tally(v) for k, v in sorted(buckets.items())}


COUNT_CASES = [
    (None, None, None),
    (Q.type("order.created"), None, None),
    (None, "event_type", None),
    (None, "stream_id", None),
    (None, "correlation_id", None),
    (~Q.type("audit.note"), "data.status", None),
    (None, "data.flag", None),  # true, 1, "true", null and 0/false side by side
    (None, "data.user.id", None),
    (None, "data.mixed", None),  # objects and arrays are left out
    (None, "data.amount", None),
    (None, "data.items.0.qty", None),
    (None, None, "minute"),
    (None, None, "hour"),
    (Q.data("user_id") > 0, None, "day"),
    (None, "event_type", "hour"),
    (Q.data("amount").exists(), "data.flag", "day"),
]


@pytest.mark.parametrize(
    ("f", "by", "per"), COUNT_CASES, ids=[f"{c[1]}-{c[2]}-{c[0] is not None}" for c in COUNT_CASES]
)
def test_counts_by_field_and_time_bucket_match_the_model(engine, f, by, per):
    with engine.connect() as conn:
        got = count(conn, f, by=by, per=per)
    want = model_count(f, by, per)
    assert got == want
    if per is not None:
        assert list(got) == sorted(got), "buckets come in time order"


def test_count_keys_keep_json_types_apart_where_python_can(engine):
    # "1" (a string) and 1 (a number) are different groups; 1 and 1.0 are one group.
    with engine.connect() as conn:
        got = count(conn, by="data.user.id")
    assert got["1"] == sum(1 for e in MODEL if get(e, "user", "id") == "1")
    assert got[1] == sum(1 for e in MODEL if same(get(e, "user", "id"), 1))


@pytest.mark.parametrize("by", ["position", "data", "data.a'b", "recorded_at; drop table esf_events", 3])
def test_count_by_an_unknown_field_is_a_query_error(engine, by):
    with engine.connect() as conn, pytest.raises(QueryError):
        count(conn, by=by)


def test_count_per_an_unknown_period_is_a_query_error(engine):
    with engine.connect() as conn, pytest.raises(QueryError):
        count(conn, per="week")


def model_aggregate(fn: str, field: str, f: Any = None) -> Any:
    path = parse_field(field, columns=())
    values = [resolve(e.data, path) for e in MODEL if f is None or f.matches(e)]
    numbers = [v for v in values if json_kind(v) == "number"]
    if not numbers:
        return None
    return {"min": min, "max": max, "sum": sum, "avg": lambda xs: sum(xs) / len(xs)}[fn](numbers)


AGG_CASES = [
    (fn, field, f)
    for fn in ("min", "max", "sum", "avg")
    for field, f in (
        ("data.amount", None),
        ("data.user_id", Q.type("order.created")),
        ("data.flag", None),  # booleans are not numbers
        ("data.items.0.qty", None),
        ("data.status", None),  # never a number: None
    )
]


def close(got: Any, want: Any, exact: bool) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return got == want if exact else got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("fn", "field", "f"), AGG_CASES, ids=[f"{c[0]}-{c[1]}" for c in AGG_CASES])
def test_aggregates_of_numeric_fields_match_the_model(engine, fn, field, f):
    with engine.connect() as conn:
        got = aggregate(conn, fn, field, f)
    assert close(got, model_aggregate(fn, field, f), exact=fn in ("min", "max"))
    if fn == "avg" and got is not None:
        assert isinstance(got, float)


@pytest.mark.parametrize("fn", ["min", "max", "sum", "avg"])
@pytest.mark.parametrize("per", ["hour", "day"])
def test_aggregates_per_time_bucket_match_the_model(engine, fn, per):
    want: dict[str, Any] = {}
    for e in MODEL:
        if json_kind(get(e, "amount")) == "number":
            want.setdefault(bucket_start(e.recorded_at, per), [])
    for bucket in want:
        values = [
            get(e, "amount")
            for e in MODEL
            if bucket_start(e.recorded_at, per) == bucket and json_kind(get(e, "amount")) == "number"
        ]
        want[bucket] = {"min": min, "max": max, "sum": sum, "avg": lambda xs: sum(xs) / len(xs)}[fn](values)
    with engine.connect() as conn:
        got = aggregate(conn, fn, "data.amount", per=per)
    assert list(got) == sorted(want)
    assert all(close(got[k], want[k], exact=fn in ("min", "max")) for k in want)


@pytest.mark.parametrize(
    ("fn", "field"), [("median", "data.amount"), ("sum", "event_type"), ("sum", "data.a b"), (None, "data.x")]
)
def test_an_unknown_aggregate_or_field_is_a_query_error(engine, fn, field):
    with engine.connect() as conn, pytest.raises(QueryError):
        aggregate(conn, fn, field)


# ---------------------------------------------------------------- sequences


def follows(a: StoredEvent, b: StoredEvent, then: Any, within: timedelta, by: str) -> bool:
    key = getattr(a, by)
    return (
        key is not None
        and getattr(b, by) == key
        and b.position > a.position
        and b.recorded_at - a.recorded_at <= within
        and then.matches(b)
    )


def model_followed_by(first: Any, then: Any, within: timedelta, by: str) -> list[tuple[int, int]]:
    pairs = []
    for a in MODEL:
        if first.matches(a) and getattr(a, by) is not None:
            later = [b for b in MODEL if follows(a, b, then, within, by)]
            if later:
                pairs.append((a.position, later[0].position))
    return pairs


def model_not_followed_by(first: Any, then: Any, within: timedelta, by: str, now: datetime) -> list[int]:
    return [
        a.position
        for a in MODEL
        if first.matches(a)
        and a.recorded_at <= now - within
        and not any(follows(a, b, then, within, by) for b in MODEL)
    ]


SEQUENCES = [
    (Q.type("order.created"), Q.type("payment.received"), timedelta(minutes=10), "correlation_id"),
    (Q.type("order.created"), Q.type("payment.received"), timedelta(hours=3), "correlation_id"),
    (Q.type("order.created"), Q.type("payment.received"), timedelta(days=30), "correlation_id"),
    (Q.type("order.created"), Q.type("order.created"), timedelta(hours=6), "correlation_id"),
    (Q.data("user_id") == 42, Q.data("amount") > 1, timedelta(hours=12), "correlation_id"),
    (Q.types("order.created", "user.signup"), ~Q.type("audit.note"), timedelta(seconds=30), "correlation_id"),
    (Q.type("order.shipped"), Q.type("audit.note"), timedelta(hours=4), "stream_id"),
]


@pytest.mark.parametrize(("first", "then", "within", "by"), SEQUENCES)
def test_followed_by_pairs_each_first_event_with_its_earliest_follower(engine, first, then, within, by):
    want = model_followed_by(first, then, within, by)
    with engine.connect() as conn:
        got = followed_by(conn, first, then, within=within, by=by)
    assert [(a.position, b.position) for a, b in got] == want
    assert all(isinstance(b, StoredEvent) for _, b in got)


def test_the_sequences_exercise_both_outcomes():
    outcomes = [len(model_followed_by(*s)) for s in SEQUENCES]
    assert all(n > 0 for n in outcomes[1:]) and any(
        len(model_not_followed_by(*s, now=T0 + timedelta(days=99))) > 0 for s in SEQUENCES
    )


@pytest.mark.parametrize(("first", "then", "within", "by"), SEQUENCES)
@pytest.mark.parametrize("days", [1, 2, 99])
def test_not_followed_by_reports_first_events_whose_window_passed_unanswered(engine, first, then, within, by, days):
    now = T0 + timedelta(days=days, microseconds=1)
    want = model_not_followed_by(first, then, within, by, now)
    with engine.connect() as conn:
        got = not_followed_by(conn, first, then, within=within, by=by, now=now)
    assert [a.position for a in got] == want


def test_the_window_is_inclusive_to_the_microsecond(engine):
    # Given two events of one correlation id exactly delta apart
    a, b = next(
        (a, b)
        for a in MODEL
        for b in MODEL
        if a.correlation_id
        and b.correlation_id == a.correlation_id
        and b.position > a.position
        and b.recorded_at > a.recorded_at
    )
    delta = b.recorded_at - a.recorded_at
    first, then = Q.after_position(a.position - 1) & ~Q.after_position(a.position), Q.after_position(b.position - 1)
    then = then & ~Q.after_position(b.position)
    with engine.connect() as conn:
        # When the window is exactly delta, Then b follows a; one microsecond less, Then it does not.
        assert [(x.position, y.position) for x, y in followed_by(conn, first, then, within=delta)] == [
            (a.position, b.position)
        ]
        assert followed_by(conn, first, then, within=delta - timedelta(microseconds=1)) == []
        late = b.recorded_at + timedelta(days=1)
        assert not_followed_by(conn, first, then, within=delta - timedelta(microseconds=1), now=late) == [a]
        assert not_followed_by(conn, first, then, within=delta, now=late) == []


def test_not_followed_by_waits_for_the_window_to_close(engine):
    first, then, within = Q.type("order.created"), Q.type("payment.received"), timedelta(minutes=10)
    a = next(e for e in MODEL if first.matches(e))
    with engine.connect() as conn:
        before = not_followed_by(
            conn, first, then, within=within, now=a.recorded_at + within - timedelta(microseconds=1)
        )
        at = not_followed_by(conn, first, then, within=within, now=a.recorded_at + within)
    assert a.position not in [e.position for e in before]
    assert (a.position in [e.position for e in at]) == (
        a.position in model_not_followed_by(first, then, within, "correlation_id", a.recorded_at + within)
    )


def test_default_now_is_the_current_time(engine):
    first, then, within = Q.type("order.created"), Q.type("payment.received"), timedelta(minutes=10)
    with engine.connect() as conn:
        got = not_followed_by(conn, first, then, within=within)
    assert [e.position for e in got] == model_not_followed_by(first, then, within, "correlation_id", datetime.now(UTC))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"within": timedelta(0)},
        {"within": -timedelta(seconds=1)},
        {"within": 600},
        {"within": timedelta(minutes=1), "by": "event_type"},
        {"within": timedelta(minutes=1), "by": "data.user_id"},
        {"within": timedelta(minutes=1), "limit": 0},
    ],
)
def test_invalid_sequence_arguments_are_query_errors(engine, kwargs):
    with engine.connect() as conn:
        with pytest.raises(QueryError):
            followed_by(conn, Q.type("a"), Q.type("b"), **kwargs)
        with pytest.raises(QueryError):
            not_followed_by(conn, Q.type("a"), Q.type("b"), **kwargs)
        with pytest.raises(QueryError):
            followed_by(conn, "order.created", Q.type("b"), within=timedelta(minutes=1))
        with pytest.raises(QueryError):
            not_followed_by(conn, Q.type("a"), Q.type("b"), within=timedelta(minutes=1), now=datetime(2026, 1, 1))


def test_sequence_limits_cut_the_ordered_result(engine):
    first, then, within = Q.type("order.created"), ~Q.type("audit.note"), timedelta(days=30)
    with engine.connect() as conn:
        pairs = followed_by(conn, first, then, within=within, limit=3)
        lonely = not_followed_by(conn, first, Q.type("nothing"), within=within, limit=2)
    assert [(a.position, b.position) for a, b in pairs] == model_followed_by(first, then, within, "correlation_id")[:3]
    assert [e.position for e in lonely] == [e.position for e in MODEL if first.matches(e)][:2]


# ---------------------------------------------------------------- the store mixin


class MixinStore(SqlQueryMixin):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine


def test_the_store_mixin_answers_like_the_executors(engine):
    store = MixinStore(engine)
    f = Q.type("order.created")
    assert positions(store.query(f)) == expected(f.matches)
    assert positions(store.query(f.query(order="desc", limit=2))) == expected(f.matches)[::-1][:2]
    page = store.query_page(f, limit=5)
    assert positions(list(page.events)) == expected(f.matches)[:5] and page.next_cursor is not None
    assert store.count(f) == len(expected(f.matches))
    assert store.count(by="event_type", per="day") == model_count(None, "event_type", "day")
    assert store.aggregate("max", "data.amount", f) == model_aggregate("max", "data.amount", f)
    within = timedelta(hours=3)
    pairs = store.followed_by(f, Q.type("payment.received"), within=within)
    assert [(a.position, b.position) for a, b in pairs] == model_followed_by(
        f, Q.type("payment.received"), within, "correlation_id"
    )
    now = T0 + timedelta(days=9)
    assert positions(store.not_followed_by(f, Q.type("payment.received"), within=within, now=now)) == (
        model_not_followed_by(f, Q.type("payment.received"), within, "correlation_id", now)
    )


def test_an_invalid_query_fails_before_the_mixin_connects():
    # The engine points nowhere: a QueryError proves that nothing tried to connect.
    store = MixinStore(create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with pytest.raises(QueryError):
        store.query_page(None, limit=0)
    with pytest.raises(QueryError):
        store.followed_by(Q.type("a"), Q.type("b"), within=timedelta(0))


def test_an_unreachable_database_is_service_unavailable():
    store = MixinStore(create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"))
    with pytest.raises(ServiceUnavailable):
        store.query(Q.type("a"))
    with pytest.raises(ServiceUnavailable):
        store.count()


# ---------------------------------------------------------------- statement templates


def test_a_cached_statement_answers_with_each_calls_own_values(engine):
    # Given fetches whose filters share a shape (same paths and operators, other values)
    from esf.plugins.sqlalchemy_events import _query as compiled

    compiled._TEMPLATES.clear()
    values = [42, 1, 2**40, -7, 0.1, "1", "paid", True, False, None]
    with engine.connect() as conn:
        for value in values:
            for f in (
                Q.data("flag") == value,
                Q.data("user.id").in_([value, 2]) | (Q.type("audit.note") & Q.data("items.0.qty").exists()),
                Q.data("tags").contains(value) & Q.after_position(5),
            ):
                # Then every call returns its own answer, not the first call's
                assert positions(fetch(conn, f)) == expected(f.matches), (f, value)
                page = fetch_page(conn, Query(f, order="desc"), 3, "80")
                assert positions(list(page.events)) == [p for p in expected(f.matches)[::-1] if p < 80][:3]
    # And the statements were built once per shape: numbers, strings, true, false and null differ.
    assert len(compiled._TEMPLATES) == 3 * 2 * 5


def test_the_template_cache_is_bounded(engine, monkeypatch):
    from esf.plugins.sqlalchemy_events import _query as compiled

    monkeypatch.setattr(compiled, "MAX_TEMPLATES", 2)
    compiled._TEMPLATES.clear()
    with engine.connect() as conn:
        for f in (Q.type("order.created"), Q.stream("s-1"), Q.correlation("c-1"), Q.type("audit.note")):
            assert positions(fetch(conn, f)) == expected(f.matches)
    assert len(compiled._TEMPLATES) <= 2


# ---------------------------------------------------------------- nothing spliced


@pytest.mark.parametrize("dialect_name", ["postgresql", "sqlite"])
def test_caller_values_never_appear_in_the_sql_text(dialect_name):
    # Given values that would break out of a quoted literal, When compiled, Then the SQL text
    # holds placeholders only and every value is a bound parameter.
    from esf.plugins.sqlalchemy_events._query import select_events
    from sqlalchemy.dialects import postgresql, sqlite

    marker = "x'); DROP TABLE esf_events; --"
    f = (
        (Q.data("user.name") == marker)
        | (Q.data("items.0.sku") < marker)
        | Q.data("tags").contains(marker)
        | Q.data("note").in_([marker, 5])
        | Q.type(marker)
        | Q.correlation(marker)
    )
    for query in (Query(f), Query(f, order="desc", limit=5, after=1)):
        stmt, params = select_events(query, dialect_name)
        dialect = postgresql.psycopg.dialect() if dialect_name == "postgresql" else sqlite.dialect()
        text = str(stmt.compile(dialect=dialect))
        assert "DROP" not in text and marker not in text
        assert any(marker in json.dumps(v) for v in params.values())
