"""Saga jobs: the step jobs ``esf.saga.<saga>.<step>`` (and ``….compensate``) and ``esf.sagas.timeout``.

A saga's step jobs are declared when the saga is, on the step's queue with the
job options its declaration gives; their body only decodes and calls the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ConcurrencyConflict, ServiceUnavailable

if TYPE_CHECKING:
    from esf.foundation import Foundation
    from esf.jobs import JobService
    from esf.sagas import Saga, SagaService


def declare_steps(jobs: JobService, service: SagaService, cls: type[Saga]) -> None:
    """Declare the step and compensation jobs of ``cls`` in ``jobs``; they run ``service.run_step``. Raises
    ValidationError / UnknownQueue for bad options."""
    from esf.sagas._service import step_job_name

    settings = jobs.settings
    saga = cls.name
    for step_name, step in sorted(cls.steps.items()):
        queue = step.queue or settings.sagas.step_queue or settings.jobs.default_queue
        for compensation in (False, True) if step.compensate is not None else (False,):
            options: dict[str, Any] = {k: v for k, v in (("retries", step.retries), ("backoff", step.backoff),
                                                          ("max_backoff", step.max_backoff),
                                                          ("timeout", step.timeout)) if v is not None}

            def run(saga_id: str, run_id: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
                """Run one step (or compensation) of a saga instance and record its outcome."""
                return service.run_step(saga, str(saga_id), str(run_id), list(args), dict(kwargs))

            jobs.declare(run, name=step_job_name(saga, step_name, compensation=compensation), queue=queue, **options)


def register(foundation: Foundation) -> None:
    """Declare ``esf.sagas.timeout`` on the ``esf.sagas`` queue."""

    @foundation.services.task("sagas", "timeout", retries=10, backoff=0.5, max_backoff=30.0,
                              retry_on=(ServiceUnavailable, ConcurrencyConflict), timeout=60,
                              idempotency="a timeout fires only while the instance still holds its token; "
                              "firing removes it")
    def timeout(name: str, saga_id: str, timeout: str, token: str) -> dict[str, Any]:
        """Fire a saga's timeout: ``on_timeout`` runs unless it was cancelled, reset or the saga ended."""
        return {"fired": foundation.sagas.fire_timeout(name, str(saga_id), str(timeout), str(token))}
