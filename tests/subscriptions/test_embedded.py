"""Subscriptions on the embedded default: SQLite event store, SQLite broker, no server, polling dispatcher."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

import esf
from tests.jobs.harness import Worker, settings_env, wait_for

from . import apps
from .test_delivery import append_orders


def test_a_subscription_and_a_projection_run_end_to_end_on_sqlite_with_no_server(tmp_path: Path) -> None:
    # Given the embedded default (no broker, no database URL) and stored events
    data_dir = tmp_path / ".esf"
    env = settings_env("", data_dir=str(data_dir), extra={"ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.2",
                                                          "ESF_TELEMETRY_ENABLED": "false"})
    fnd = esf.Foundation(esf.Settings.from_env(env))
    engine = fnd.events.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(sa.text(apps.PROJECTION_DDL.replace("DOUBLE PRECISION", "REAL")))
    expected = append_orders(fnd, 40, seed=40)
    # When an embedded worker runs the app
    worker = Worker(env, tmp_path / "w.log", app="tests.subscriptions.apps:make_embedded")
    try:
        worker.wait_ready()
        seen_file = data_dir / "seen.txt"

        def seen() -> list[int]:
            return [int(x) for x in seen_file.read_text().split()] if seen_file.exists() else []

        # Then it catches up, and follows events appended while it runs
        wait_for(lambda: set(seen()) >= set(expected), timeout=90, message="catch-up on SQLite")
        expected += append_orders(fnd, 40, seed=41)
        wait_for(lambda: set(seen()) >= set(expected), timeout=60, message="live delivery on SQLite")
        assert sorted(seen()) == sorted(expected)
        # And the projection wrote each paid order once
        paid = [e.position for e in fnd.events.query(esf.Q.type("order.paid"))]

        def rows() -> list[int]:
            with engine.connect() as conn:
                return [int(p) for (p,) in conn.execute(sa.text("SELECT position FROM proj_totals ORDER BY 1"))]

        wait_for(lambda: rows() == paid, timeout=60, message=f"the projection's rows; worker log:\n{worker.log()}")
    finally:
        worker.stop(timeout=30)
        fnd.close()
