"""``fnd.events``: the Foundation's event store, with :meth:`FoundationEvents.subscribe`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._contract import EventStore

if TYPE_CHECKING:
    from ..subscriptions import Subscription, SubscriptionService


class Events(EventStore, Protocol):
    """The type of ``fnd.events``: an :class:`EventStore` that also declares subscriptions."""

    def subscribe(self, name: str, handler: Callable[..., Any], **options: Any) -> Subscription:
        """Declare a durable subscription (as ``fnd.subscriptions.subscribe``)."""
        ...


class FoundationEvents:
    """Wraps the Foundation's store: :meth:`subscribe` declares a subscription; every other attribute
    is the store's own."""

    def __init__(self, store: EventStore, subscriptions: Callable[[], SubscriptionService]) -> None:
        self._store = store
        self._subscriptions = subscriptions

    def subscribe(self, name: str, handler: Callable[..., Any], **options: Any) -> Subscription:
        """Declare a durable subscription: ``handler(event)`` runs once per matching event, at least once.

        ``fnd.events.subscribe(name, handler, filter=Q…, start="beginning"|"now"|position, batch_size=,
        max_in_flight=, partition_by="stream_id"|"correlation_id"|None, queue=)`` and the handler job's
        options (``retries``, ``backoff``, ``timeout`` …): see :meth:`esf.subscriptions.SubscriptionService.subscribe`.

        Raises:
            ValidationError: an invalid option (every one is named), or the name is taken.
        """
        return self._subscriptions().subscribe(name, handler, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
