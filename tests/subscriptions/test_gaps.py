"""Gap-safe reading: a subscription never skips an event committed below a position it already read."""

from __future__ import annotations

import random
import threading
import time
import uuid

import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import SqlSubscriptionBackend
from esf.plugins.sqlalchemy_events._schema import subscription_batches
from sqlalchemy.orm import Session

from esf import Event
from esf.events import create_event_store
from esf.settings import Settings


class Rollback(Exception):
    pass


def test_a_subscription_reading_while_slow_and_rolled_back_appends_commit_never_skips_an_event(
        pg_url: str, tmp_path) -> None:
    # Given a subscription that reads in a loop, with no handler finishing (every batch it reads stays stored)
    store = create_event_store(Settings(database_url=pg_url, data_dir=str(tmp_path)), pool_size=8)
    backend = SqlSubscriptionBackend(store.engine)
    backend.ensure("gaps", start="beginning", spec={})
    stop = threading.Event()

    # When four writers append in their own transactions, sleeping before commit, some rolling back
    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(40):
            try:
                with Session(store.engine) as s:
                    store.append(Event("t.gap", {"w": seed, "i": i}, stream_id=f"w-{seed}"), session=s)
                    time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.03]))
                    if rng.random() < 0.15:
                        raise Rollback
                    s.commit()
            except Rollback:
                pass

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    reads = 0
    while any(t.is_alive() for t in threads) or reads == 0:
        backend.tick("gaps", filter=None, partition_by=None, batch_size=1, max_in_flight=1000,
                     make_job=lambda batch, positions, cid: {"job": "x", "job_id": uuid.uuid4().hex})
        reads += 1
    for t in threads:
        t.join()
    backend.tick("gaps", filter=None, partition_by=None, batch_size=1, max_in_flight=1000,
                 make_job=lambda batch, positions, cid: {"job": "x", "job_id": uuid.uuid4().hex})
    stop.set()
    # Then every committed event was read exactly once, although the reader ran ahead of slow writers
    with store.engine.connect() as conn:
        read = [p for (ps,) in conn.execute(sa.select(subscription_batches.c.positions)
                                            .where(subscription_batches.c.name == "gaps")) for p in ps]
    committed = [e.position for e in store.read_all(limit=1000)]
    assert len(committed) > 100 and reads > 10
    assert sorted(read) == committed
    assert len(read) == len(set(read))
    store.close()
