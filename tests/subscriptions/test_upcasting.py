"""Subscriptions, projections and rebuilds deliver events upcast to their current shape;
``fnd.events.subscribe`` declares a subscription."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events._schema import subscription_batches as batches

import esf
from esf import Event, Q
from esf.foundation import Foundation


@pytest.fixture(params=["postgresql", "sqlite"])
def fnd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Foundation]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    f = Foundation(esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path / "data"), "ESF_DATABASE_URL": url,
                                          "ESF_TELEMETRY_ENABLED": "false", "ESF_SUBSCRIPTIONS_DISPATCHER": "false"}))
    try:
        yield f
    finally:
        f.close()


def run(fnd: Foundation, name: str) -> None:
    """The dispatcher's tick, then the handler job's body on each batch sent, until caught up."""
    engine = fnd.events.engine
    for _ in range(20):
        fnd.subscriptions.tick(name)
        with engine.connect() as conn:
            sent = conn.execute(sa.select(batches.c.id, batches.c.positions)
                                .where(batches.c.name == name, batches.c.state == "sent")).all()
        for batch_id, positions in sent:
            fnd.subscriptions.handle(name, int(batch_id), [int(p) for p in positions])
        if fnd.subscriptions.status(name).checkpoint == fnd.events.head():
            return
    raise AssertionError(f"{name} did not catch up")


def test_subscriptions_projections_and_rebuilds_see_events_in_their_current_shape(fnd: Foundation) -> None:
    # Given order.paid events stored in version 1 (``amount``), then an upcaster to version 2 (``total``)
    fnd.events.append([Event("order.paid", {"amount": i}, stream_id=f"o-{i % 3}") for i in range(1, 13)])
    fnd.upcaster("order.paid", from_version=1)(lambda data: {"total": data["amount"] * 100})
    fnd.events.append([Event("order.paid", {"total": 99_999}, stream_id="o-new")])
    # And a subscription declared through fnd.events.subscribe, and a projection with a table
    seen: list[dict[str, Any]] = []
    sub = fnd.events.subscribe("upcast", lambda e: seen.append(dict(e.data)), filter=Q.type("order.paid"),
                               batch_size=5, partition_by=None)
    assert sub is fnd.subscriptions.get("upcast")
    with fnd.events.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE up_totals (position BIGINT, total BIGINT)"))

    @fnd.projection("up_proj", filter=Q.type("order.paid"), tables=["up_totals"])
    def project(event: Any, session: Any) -> None:
        session.execute(sa.text("INSERT INTO up_totals VALUES (:p, :t)"),
                        {"p": event.position, "t": event.data["total"]})

    # When they run, and the projection is rebuilt
    run(fnd, "upcast")
    run(fnd, "up_proj")
    fnd.subscriptions.rebuild("up_proj", chunk=4)
    # Then every handler saw the current shape, old events upcast
    expected = [{"total": i * 100} for i in range(1, 13)] + [{"total": 99_999}]
    assert seen == expected
    with fnd.events.engine.connect() as conn:
        totals = [t for (t,) in conn.execute(sa.text("SELECT total FROM up_totals ORDER BY position"))]
    assert totals == [e["total"] for e in expected]
