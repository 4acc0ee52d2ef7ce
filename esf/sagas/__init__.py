"""Sagas (process managers): durable, versioned instances that react to events, run steps as jobs,
set timeouts, and compensate their completed steps in reverse order when one fails.

Public API::

    class Checkout(Saga):
        name = "checkout"
        starts_on = "order.placed"                   # the event that starts an instance
        correlate_by = "order_id"                    # later events with the same order_id reach it

        reserve = step(reserve_stock, compensate=release_stock, retries=3)
        charge = step(charge_card, compensate=refund)

        def on_start(self, event):
            self.state["order_id"] = event.data["order_id"]
            self.run(self.reserve, event.data["order_id"])
            self.set_timeout("payment", 600)         # on_timeout("payment") in 10 minutes

        @reacts("payment.received")
        def paid(self, event):
            self.cancel_timeout("payment")
            self.run(self.charge, self.state["order_id"])

        def on_step_done(self, step, result):
            if step == "charge":
                self.complete()

    fnd.saga(Checkout)
    fnd.sagas.list(status="stuck"); fnd.sagas.get("checkout", "o-1")
    fnd.sagas.retry("checkout", "o-1"); fnd.sagas.abort("checkout", "o-1")

Every transition is an event on the stream ``saga-<name>-<id>``. See docs/sagas.md.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import StepFailed
from ._model import (
    ACTIVE,
    NAME_RE,
    STATUSES,
    STEP_JOB_PREFIX,
    Effect,
    Saga,
    SagaInstance,
    SagaStep,
    StepContext,
    reacts,
    step,
    stream_of,
)
from ._service import SUBSCRIPTION_PREFIX, TIMEOUT_JOB, SagaService, parse_ref, step_job_name

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "ACTIVE",
    "NAME_RE",
    "STATUSES",
    "STEP_JOB_PREFIX",
    "SUBSCRIPTION_PREFIX",
    "TIMEOUT_JOB",
    "Effect",
    "Saga",
    "SagaBackend",
    "SagaInstance",
    "SagaService",
    "SagaStep",
    "StepContext",
    "StepFailed",
    "parse_ref",
    "reacts",
    "step",
    "step_job_name",
    "stream_of",
]


@runtime_checkable
class SagaBackend(Protocol):
    """Where saga instances are kept: one row each, in the event store's database."""

    def transaction(self) -> AbstractContextManager[Session]:
        """A session in one write transaction, committed when the block exits (rolled back if it raises)."""
        ...

    def get(self, name: str, saga_id: str) -> dict[str, Any] | None:
        """The stored row (name, saga_id, version, status, state, progress, correlation_id, started_at,
        updated_at), or None."""
        ...

    def write(self, session: Session, row: dict[str, Any], *, expected_version: int) -> bool:
        """Store ``row`` in ``session``'s transaction if the stored version is ``expected_version``
        (0: no row yet). False, writing nothing, otherwise."""
        ...

    def list(self, name: str | None = None, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rows, most recently updated first."""
        ...

    def delete(self, name: str, saga_id: str) -> bool:
        """Forget a row. True when it existed."""
        ...
