"""A projection's writes commit with its checkpoint: each event takes effect exactly once."""

from __future__ import annotations

import pytest

from esf import Event
from tests.jobs.harness import wait_for

from .conftest import Env


@pytest.mark.slow
def test_a_projection_applies_each_event_once_even_when_its_process_dies_between_handler_and_commit(
        subs_env: Env) -> None:
    # Given a worker, and paid orders of which three kill their pool process after the write, before the commit,
    # each after other events of its batch were handled (batches of 5 per stream: 7 is 2nd, 18 5th, 33 4th)
    fnd = subs_env.foundation()
    worker = subs_env.worker()
    events = [Event("order.paid", {"order": i, "total": i, "crash_once": i in (7, 18, 33)}, stream_id=f"o-{i % 4}")
              for i in range(40)]
    stored = fnd.events.append(events)
    # When the projection has caught up
    wait_for(lambda: fnd.subscriptions.status("totals").checkpoint == fnd.events.head(), timeout=90,
             message=f"the projection's checkpoint; worker log:\n{worker.log()}")
    # Then the processes did die mid-batch
    assert len(subs_env.redis.lrange("crashes", 0, -1)) == 3, worker.log()
    # And every event has exactly one row in the read model
    rows = subs_env.sql("SELECT position, count(*) FROM proj_totals GROUP BY position ORDER BY position")
    assert [(int(p), int(n)) for p, n in rows] == [(e.position, 1) for e in stored], worker.log()
