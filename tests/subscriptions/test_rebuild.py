"""``rebuild`` replays a projection into fresh tables while the old ones serve, and swaps them in when caught up.

The live projection runs in this process (dispatcher ticks, then the handler job's body on each
batch sent), so the tests need no worker; the rebuild runs beside it, as ``esf projections
rebuild`` does in its own process.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events._schema import subscription_batches as batches

import esf
from esf import Event, Q
from esf.errors import ValidationError
from esf.foundation import Foundation
from tests.jobs.harness import wait_for

from . import apps

TOTALS = Q.type("order.paid")
DDL = ("CREATE TABLE rb_totals (position BIGINT NOT NULL, total INTEGER)",
       "CREATE INDEX ix_rb_totals_position ON rb_totals (position)")


class Harness:
    def __init__(self, fnd: Foundation) -> None:
        self.fnd = fnd
        self.engine: sa.Engine = fnd.events.engine  # type: ignore[attr-defined]
        self.fail_at: int | None = None
        self.applied_in_rebuild: list[int] = []

        @fnd.projection("rb", filter=TOTALS, batch_size=7, tables=["rb_totals"])
        def project(event: Any, session: Any) -> None:
            if event.position == self.fail_at:
                raise RuntimeError(f"cannot project {event.position}")
            session.execute(sa.text("INSERT INTO rb_totals (position, total) VALUES (:p, :t)"),
                            {"p": event.position, "t": event.data["total"]})

    def append(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.fnd.events.append([Event(rng.choice(["order.paid", "order.paid", "order.created"]),
                                      {"total": rng.randint(1, 500)}, stream_id=f"o-{rng.randrange(5)}")
                                for _ in range(n)])

    def live_step(self) -> None:
        """One round of the live projection: a dispatcher tick, then the handler job of each batch sent."""
        service = self.fnd.subscriptions
        service.tick("rb")
        with self.engine.connect() as conn:
            sent = conn.execute(sa.select(batches.c.id, batches.c.positions)
                                .where(batches.c.name == "rb", batches.c.state == "sent").order_by(batches.c.id)).all()
        for batch_id, positions in sent:
            service.handle("rb", int(batch_id), [int(p) for p in positions])

    def catch_up(self) -> None:
        def done() -> bool:
            self.live_step()
            return self.fnd.subscriptions.status("rb").checkpoint == self.fnd.events.head()

        wait_for(done, timeout=60, message="the live projection catching up")

    def rows(self) -> list[tuple[int, int]]:
        with self.engine.connect() as conn:
            return [(int(p), int(t)) for p, t in conn.execute(sa.text(
                "SELECT position, total FROM rb_totals ORDER BY position"))]

    def full_replay(self) -> list[tuple[int, int]]:
        return [(e.position, int(e.data["total"])) for e in self.fnd.events.query(TOTALS)]

    def tables(self) -> set[str]:
        return set(sa.inspect(self.engine).get_table_names())


@pytest.fixture(params=["postgresql", "sqlite"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    settings = esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path / "data"), "ESF_DATABASE_URL": url,
                                      "ESF_TELEMETRY_ENABLED": "false", "ESF_SUBSCRIPTIONS_DISPATCHER": "false"})
    fnd = Foundation(settings)
    h = Harness(fnd)
    with h.engine.begin() as conn:
        for statement in DDL:
            conn.execute(sa.text(statement))
    try:
        yield h
    finally:
        fnd.close()


def test_a_rebuild_while_events_keep_arriving_swaps_in_a_model_equal_to_a_full_replay(harness: Harness) -> None:
    # Given a live projection caught up with 300 events
    harness.append(300, seed=1)
    harness.catch_up()
    before = harness.rows()
    assert before == harness.full_replay()
    # And a thread appending events, and the live projection running, all through the rebuild
    stop = threading.Event()
    appended = [0]

    def appender() -> None:
        seed = 100
        while not stop.is_set():
            seed += 1
            harness.append(5, seed=seed)
            appended[0] += 1
            time.sleep(0.05)

    def live() -> None:
        while not stop.is_set():
            harness.live_step()
            time.sleep(0.02)

    threads = [threading.Thread(target=appender), threading.Thread(target=live)]
    for t in threads:
        t.start()
    served: list[list[tuple[int, int]]] = []
    caught_up: list[int] = []
    head_at_start = harness.fnd.events.head()

    def progress(position: int, head: int, applied: int) -> None:
        if position < head:
            if not served:
                # The appender adds more while the rebuild runs (waited for, bounded, once).
                seen = appended[0]
                wait_for(lambda: appended[0] > seen, timeout=30, interval=0.01, message="an append")
            served.append(harness.rows())
        elif not caught_up:
            # Caught up with the head: events appended now land between the last chunk and the swap.
            caught_up.append(head)
            harness.append(10, seed=99)

    try:
        result = harness.fnd.subscriptions.rebuild("rb", chunk=40, progress=progress)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    # Then the rebuild ran in several chunks while the old table served its rows, once each, and grew
    assert len(served) >= 3
    for rows in served:
        positions = [p for p, _ in rows]
        assert len(positions) == len(set(positions)), "the live table holds an event twice during the rebuild"
        assert set(rows) >= set(before), "the live table lost rows during the rebuild"
    # And events appended during the rebuild were applied in it
    assert result["position"] > head_at_start
    assert result["position"] >= caught_up[0] + 10
    # And once the live projection has caught up, the model equals a full replay, each event once
    harness.catch_up()
    assert harness.rows() == harness.full_replay()
    # And the shadow table is gone, the live one kept its index, no rebuild is under way
    assert "rb_totals__esf_rebuild" not in harness.tables()
    assert sa.inspect(harness.engine).get_indexes("rb_totals")
    assert harness.fnd.subscriptions.projections()[0][1] is None


def test_an_interrupted_rebuild_leaves_the_old_model_intact_and_resumes_where_it_stopped(harness: Harness) -> None:
    # Given a live projection caught up with 200 events
    harness.append(200, seed=2)
    harness.catch_up()
    before = harness.rows()
    # When a rebuild fails at the 60th matching event (its handler raises)
    harness.fail_at = before[59][0]
    with pytest.raises(RuntimeError, match="cannot project"):
        harness.fnd.subscriptions.rebuild("rb", chunk=20)
    # Then the live table is untouched, and the chunks before the failure are kept
    assert harness.rows() == before
    reached = harness.fnd.subscriptions.projections()[0][1]
    assert reached is not None and before[39][0] <= reached < harness.fail_at
    # When the cause is fixed, more events arrive, and the rebuild runs again
    harness.fail_at = None
    harness.append(50, seed=3)
    result = harness.fnd.subscriptions.rebuild("rb", chunk=20)
    # Then it resumed where it stopped, and the model equals a full replay with each event once
    assert result["resumed_from"] == reached
    harness.catch_up()
    assert harness.rows() == harness.full_replay()


def test_only_a_projection_with_tables_can_be_rebuilt(harness: Harness) -> None:
    fnd = harness.fnd
    fnd.subscriptions.subscribe("plain", lambda e: None)
    with pytest.raises(ValidationError) as info:
        fnd.subscriptions.rebuild("plain")
    assert info.value.code == "validation_failed"
    with pytest.raises(ValidationError, match="tables"):
        fnd.subscriptions.subscribe("plain2", lambda e: None, tables=["t"])
    with pytest.raises(ValidationError, match="tables"):
        fnd.subscriptions.subscribe("proj2", lambda e, s: None, projection=True, tables=["no such"])


def test_the_command_line_lists_projections_and_rebuilds_one_with_progress_lines(tmp_path: Path) -> None:
    # Given the embedded app's projection, never run, and stored events
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ESF_")},
           "ESF_DATA_DIR": str(tmp_path / "data"), "ESF_TELEMETRY_ENABLED": "false"}
    fnd = Foundation(esf.Settings.from_env(env))
    try:
        with fnd.events.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(sa.text(apps.PROJECTION_DDL.replace("DOUBLE PRECISION", "REAL")))
        fnd.events.append([Event("order.paid", {"total": i}) for i in range(30)])

        def esf_cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "esf.cli", "--app", "tests.subscriptions.apps:make_embedded",
                                   *args], env=env, capture_output=True, text=True, timeout=120, check=True)

        # When it is rebuilt from the command line (stderr is not a terminal)
        done = esf_cli("projections", "rebuild", "lite_totals", "--chunk", "10")
        # Then plain progress lines go to stderr, the result to stdout
        assert "lite_totals: 100.0%  position 30/30  30 events applied" in done.stderr
        assert "rebuilt: 30 events applied, swapped in at position 30" in done.stdout
        with fnd.events.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(sa.text("SELECT count(*) FROM proj_totals")).scalar() == 30
        # And the list shows it with its table and checkpoint
        listed = esf_cli("projections", "list").stdout
        assert "lite_totals  tables=proj_totals" in listed and "checkpoint=30" in listed
    finally:
        fnd.close()
