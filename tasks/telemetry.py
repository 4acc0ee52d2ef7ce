"""The telemetry service's tasks, on the ``esf.telemetry`` queue.

``esf.telemetry.export`` pushes the cluster-wide view to the push-style exporters named in
``services.telemetry_push_exporters`` (StatsD), once per interval for the whole deployment;
``esf.telemetry.rollup`` rolls the job history's complete minutes up into per-minute run-time
figures (see :mod:`esf.telemetry._rollup`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.services import DefaultSchedule

if TYPE_CHECKING:
    from esf.foundation import Foundation

TELEMETRY_SERVICE = "telemetry"


def register(foundation: Foundation) -> None:
    s = foundation.settings.services

    @foundation.services.task(TELEMETRY_SERVICE, "export", retries=2, backoff=2.0, max_backoff=10.0, timeout=60,
                              retry_on=(ServiceUnavailable,),
                              idempotency="pushes take turns under a lease and continue from the stored state; "
                                          "a push repeated after a crash sends its increase again (at least once)",
                              schedule=DefaultSchedule(every_s=s.telemetry_export_every_s,
                                                       enabled=s.schedules and s.telemetry_export
                                                       and bool(s.telemetry_push_exporters),
                                                       setting="services.telemetry_export"))
    def export(exporters: list[str] | None = None) -> dict[str, Any]:
        """Push the cluster-wide metrics to the push-style exporters (``services.telemetry_push_exporters``)."""
        from esf.telemetry._push import push_cluster_view

        names = list(s.telemetry_push_exporters) if exporters is None else list(exporters)
        return push_cluster_view(foundation.telemetry, foundation.jobs.coordinator, foundation.settings.telemetry,
                                 names)

    @foundation.services.task(TELEMETRY_SERVICE, "rollup", retries=3, backoff=10.0, max_backoff=120.0, timeout=300,
                              retry_on=(ServiceUnavailable,),
                              idempotency="a minute rolled up again replaces its row with the same figures; "
                                          "the watermark only moves forward",
                              schedule=DefaultSchedule(every_s=s.telemetry_rollup_every_s,
                                                       enabled=s.schedules and s.telemetry_rollup,
                                                       setting="services.telemetry_rollup"))
    def rollup(since: float | None = None) -> dict[str, Any]:
        """Roll up the job history's complete minutes into per-minute run-time figures (``esf metrics jobs``)."""
        from esf.telemetry._rollup import roll_up, rollup_backend

        return roll_up(foundation.events, rollup_backend(foundation.events), now=time.time(),
                       settle_s=s.telemetry_rollup_settle_s, max_minutes=s.telemetry_rollup_max_minutes,
                       first_s=s.telemetry_rollup_first_s, retention_s=s.telemetry_rollup_retention_s,
                       since=since)
