"""ESF's own jobs: thin bodies that decode, call a service, and return plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    """Declare every service job on ``foundation`` (in the producer and in the worker alike)."""
    from . import events

    events.register(foundation)
    from . import secrets

    secrets.register(foundation)
    from . import cache

    cache.register(foundation)
    from . import config

    config.register(foundation)
    from . import telemetry

    telemetry.register(foundation)
    from . import subscriptions

    subscriptions.register(foundation)

    from . import gather

    gather.register(foundation)
    from . import sourcing

    sourcing.register(foundation)

    from . import sagas

    sagas.register(foundation)
