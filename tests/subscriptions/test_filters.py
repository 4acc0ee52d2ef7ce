"""A subscription's server-side filter selects exactly what ``query`` returns, for every DSL operator."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import SqlEventStore, SqlSubscriptionBackend
from esf.plugins.sqlalchemy_events._schema import subscription_batches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esf import Event
from esf.errors import QueryError
from esf.events import create_event_store
from esf.settings import Settings
from tests.conftest import PG_ADMIN_URL, require_port
from tests.events.test_query_backends import OPS, STATUSES, TYPES, build, make_data, scalars, valid_paths


def _fill(store: Any) -> None:
    rng = random.Random(5)
    store.append([Event(rng.choice(TYPES), make_data(rng, i), stream_id=f"s-{rng.randint(1, 4)}",
                        correlation_id=rng.choice([None, "c-1", "c-2"])) for i in range(1, 121)])


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SqlEventStore]]:
    require_port(5432, "PostgreSQL")
    name = f"esf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    data: Path = tmp_path_factory.mktemp("subs-filters")
    pg = create_event_store(Settings(database_url=f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", data_dir=str(data)))
    lite = create_event_store(Settings(data_dir=str(data)))
    for store in (pg, lite):
        _fill(store)
    try:
        yield [pg, lite]  # type: ignore[list-item]
    finally:
        for store in (pg, lite):
            store.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delivered(store: SqlEventStore, f: Any) -> list[int]:
    """The positions a new subscription with filter ``f`` reads from the beginning."""
    backend = SqlSubscriptionBackend(store.engine)
    name = f"p-{uuid.uuid4().hex[:12]}"
    backend.ensure(name, start="beginning", spec={})
    backend.tick(name, filter=f, partition_by=None, batch_size=1000, max_in_flight=1,
                 make_job=lambda batch, positions, cid: {"job": "x", "job_id": uuid.uuid4().hex})
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(subscription_batches.c.positions).where(subscription_batches.c.name == name)
                            .order_by(subscription_batches.c.id)).all()
    return [p for (positions,) in rows for p in positions]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(OPS), path=valid_paths, value=scalars, combine=st.sampled_from(["", "and", "or", "not"]),
       other=st.sampled_from(TYPES + STATUSES))
def test_a_subscription_filter_with_any_operator_selects_what_query_returns_on_both_databases(
        stores: list[SqlEventStore], op: str, path: str, value: Any, combine: str, other: str) -> None:
    # Given stored events of varied shapes, and a filter of any operator, alone or combined
    if op == "in":
        value = [value, "paid", 1]
    try:
        f = build(op, path, value)
    except QueryError:
        return
    second = build("type", None, other) if other in TYPES else build("eq", "status", other)
    f = {"": f, "and": f & second, "or": f | second, "not": ~f}[combine]
    for store in stores:
        # When a new subscription with that filter catches up
        got = delivered(store, f)
        # Then it reads exactly the events the query returns, in position order, as the Python model says
        want = [e.position for e in store.query(f)]
        assert got == want, store.backend
        assert want == [e.position for e in store.read_all(limit=1000) if f.matches(e)]
