"""The configuration service's tasks, on the ``esf.config`` queue.

``esf.config.reconcile`` compares every live process's applied version with the
store, announces the version again to those that stay behind (recording a
``config.diverged`` event for each) and clears the heartbeats of processes that are gone.
``esf.config.apply_batch`` applies a batch handed over by ``fnd.config.update_batch_async``
or ``schedule_batch`` (an ETA task); a refused batch is dead-lettered with its error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.services import DefaultSchedule

if TYPE_CHECKING:
    from esf.foundation import Foundation

CONFIG_SERVICE = "config"


def register(foundation: Foundation) -> None:
    s = foundation.settings.services

    @foundation.services.task(CONFIG_SERVICE, "reconcile", retries=3, backoff=5.0, max_backoff=60.0, timeout=120,
                              retry_on=(ServiceUnavailable,),
                              idempotency="a divergence is recorded under an event id fixed per node and version; "
                                          "republishing a version is harmless",
                              schedule=DefaultSchedule(every_s=s.config_reconcile_every_s,
                                                       enabled=s.schedules and s.config_reconcile,
                                                       setting="services.config_reconcile"))
    def reconcile() -> dict[str, Any]:
        """Republish to processes that stay behind, record ``config.diverged``, clear processes that are gone."""
        from esf.config._reconcile import reconcile as run
        from esf.events import Event

        report = run(foundation.config)
        if report.diverged:
            foundation.events.append([Event("config.diverged", dict(d), stream_id="config",
                                            event_id=str(d["event_id"])) for d in report.diverged])
        return report.to_dict()

    @foundation.services.task(CONFIG_SERVICE, "apply_batch", retries=5, backoff=1.0, max_backoff=30.0, timeout=60,
                              retry_on=(ServiceUnavailable,),
                              idempotency="a scheduled batch's event stream records its claim and outcome, so a "
                                          "redelivery applies nothing twice; give expected_version to an "
                                          "immediate batch for the same")
    def apply_batch(changes: dict[str, Any], expected_version: int | None = None, actor: str | None = None,
                    batch_id: str | None = None) -> dict[str, Any]:
        """Apply one configuration batch (compare-and-set with ``expected_version``); a refusal is dead-lettered."""
        from esf.config._deferred import DeferredBatches

        deferred: DeferredBatches = foundation.config.deferred
        return deferred.apply(changes, expected_version=expected_version, actor=actor, batch_id=batch_id)
