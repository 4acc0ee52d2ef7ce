"""The application the subscription tests run in worker subprocesses (settings from ESF_* variables).

Handlers record what they see in Redis (the test's own database):
``seen`` (every delivery's position, in order of handling) and ``key:<stream>``
(the positions of one stream, in order of handling). Event data drives them:
``sleep`` (seconds), ``poison`` (always raises), ``crash_once`` (a projection's
pool process dies after writing, before its transaction commits, once).
"""

from __future__ import annotations

import os
import time
from typing import Any

import esf
from esf import Q
from esf.foundation import Foundation

#: The read model of the ``totals`` projection (no unique key: duplicates would show as extra rows).
PROJECTION_DDL = "CREATE TABLE IF NOT EXISTS proj_totals (position BIGINT NOT NULL, total DOUBLE PRECISION)"


class PoisonEvent(Exception):
    pass


def build(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())
    partition = os.environ.get("ESF_TEST_SUBS_PARTITION", "stream_id")

    def record(event: Any) -> None:
        r = fnd.redis
        pipe = r.pipeline()
        pipe.rpush("seen", event.position)
        pipe.rpush(f"key:{event.stream_id}", event.position)
        pipe.execute()

    @fnd.subscription("orders", filter=Q.type("order.paid") & (Q.data("total") > 100),
                      partition_by=None if partition == "none" else partition,
                      batch_size=int(os.environ.get("ESF_TEST_SUBS_BATCH", "10")),
                      max_in_flight=int(os.environ.get("ESF_TEST_SUBS_IN_FLIGHT", "8")),
                      retries=2, backoff=0.1, max_backoff=0.2, timeout=60)
    def orders(event: Any) -> None:
        if event.data.get("poison") and not fnd.redis.exists(f"cured:{event.position}"):
            raise PoisonEvent(f"cannot handle order {event.data.get('order')}")
        if event.data.get("sleep"):
            time.sleep(float(event.data["sleep"]))
        record(event)

    @fnd.projection("totals", filter=Q.type("order.paid"), batch_size=5, retries=2, backoff=0.1, tables=["proj_totals"])
    def totals(event: Any, session: Any) -> None:
        import sqlalchemy as sa

        session.execute(sa.text("INSERT INTO proj_totals (position, total) VALUES (:p, :t)"),
                        {"p": event.position, "t": event.data.get("total")})
        session.flush()
        if event.data.get("crash_once") and fnd.redis.set(f"crashed:{event.position}", 1, nx=True):
            fnd.redis.rpush("crashes", event.position)
            os._exit(1)  # the pool process dies after the write, before the commit

    return fnd


def make() -> Foundation:
    return build()


def make_embedded() -> Foundation:
    """The embedded (SQLite, no server) app: a subscription writing to a file and a projection."""
    fnd = Foundation(esf.Settings.from_env())
    seen = fnd.settings.data_path / "seen.txt"

    @fnd.subscription("lite", filter=Q.type("order.paid") & (Q.data("total") > 100), batch_size=5)
    def lite(event: Any) -> None:
        with open(seen, "a") as f:
            f.write(f"{event.position}\n")

    @fnd.projection("lite_totals", filter=Q.type("order.paid"), batch_size=5, tables=["proj_totals"])
    def lite_totals(event: Any, session: Any) -> None:
        import sqlalchemy as sa

        session.execute(sa.text("INSERT INTO proj_totals (position, total) VALUES (:p, :t)"),
                        {"p": event.position, "t": event.data.get("total")})

    return fnd
