"""One push of the cluster-wide view to push-style exporters (the ``esf.telemetry.export`` service task).

Pull-style exporters (Prometheus) serve the merged store from any process. A
push-style one (StatsD) run in every process would push N partial views; instead
the task, fired once per interval by beat, reads the merged view and pushes it
through a fresh exporter instance. An exporter that keeps state between pushes
(StatsD sends increases, computed from the previous cumulative values) exposes
``export_state()`` / ``restore_state(state)``; that state is kept in the
coordinator (Redis, or SQLite when embedded) so the next run, on any worker,
continues from it. A lease makes concurrent runs (a redelivery overlapping a
slow push) take turns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ServiceUnavailable, ValidationError
from ._exporter_settings import exporter_defaults
from ._exporting import canonical_name, discover_exporters

if TYPE_CHECKING:
    from ..jobs._coord import Coordinator
    from ..settings import TelemetrySettings
    from ._service import Telemetry

#: Coordinator key of the lease held while pushing.
PUSH_LEASE = "telemetry:export"
#: Seconds the lease lasts (longer than any push).
PUSH_LEASE_TTL_S = 120.0
#: Coordinator key of a push exporter's state (``{name}``: ``telemetry.statsd``).
STATE_KEY = "telemetry:export:state:{name}"
#: Seconds a push exporter's state is kept without a push (after that, totals are sent again once).
STATE_TTL_S = 30 * 86400.0


def push_cluster_view(telemetry: Telemetry, coord: Coordinator, settings: TelemetrySettings,
                      names: Sequence[str]) -> dict[str, Any]:
    """Push the cluster-wide metrics of ``telemetry`` to the push-style exporters ``names``.

    Parameters:
        telemetry: the telemetry service whose cluster-wide view is pushed.
        coord: the coordinator holding the push lease and each exporter's state.
        settings: the telemetry settings (the exporters' options).
        names: the exporters.

    Raises:
        ValidationError: a name is not an installed exporter, or not push-style (non-retryable).
        ServiceUnavailable: the shared telemetry store or the coordinator is unreachable: a partial
            (one-process) view is never pushed.
    Returns:
        ``{"exported": [names], "series": n, "processes": n}``, or ``{"skipped": …}`` while another run pushes.
    """
    factories = discover_exporters()
    canonical = [canonical_name(n) for n in names]
    unknown = [n for n in canonical if n not in factories]
    if unknown:
        raise ValidationError(f"unknown exporter(s) {', '.join(unknown)}; installed: {', '.join(sorted(factories))}",
                              errors={n: "unknown" for n in unknown})
    batch = telemetry.batch(cluster=True)
    if batch.scope != "cluster":
        store = telemetry.health()["store"]
        why = store["error"] or ("telemetry.store is 'none'" if store["kind"] is None else "unreadable")
        raise ServiceUnavailable(f"telemetry: no cluster-wide view ({why}); a one-process view is not pushed")
    owner = uuid.uuid4().hex
    if not coord.acquire_lease(PUSH_LEASE, owner, PUSH_LEASE_TTL_S):
        return {"skipped": "another export is running"}
    try:
        defaults = exporter_defaults(settings)
        for name in canonical:
            exporter: Any = factories[name]()
            if not getattr(exporter, "push", False):
                raise ValidationError(f"{name} is not a push-style exporter (it serves or pulls the merged view "
                                      "itself): list it in telemetry.exporters", errors={name: "not push-style"})
            exporter.start(defaults.get(name, {}))
            try:
                key = STATE_KEY.format(name=name)
                saved = coord.get(key)
                if saved is not None and hasattr(exporter, "restore_state"):
                    exporter.restore_state(json.loads(saved))
                exporter.export(batch)
                if hasattr(exporter, "export_state"):
                    # At least once: a run that dies between the push and this write pushes the increase again.
                    coord.delete(key)
                    coord.claim(key, json.dumps(exporter.export_state()), STATE_TTL_S)
            finally:
                exporter.shutdown()
    finally:
        coord.release_lease(PUSH_LEASE, owner)
    return {"exported": canonical, "series": len(batch.samples), "processes": batch.processes}
