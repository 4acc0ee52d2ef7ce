"""Backend objects given to a Foundation instead of the ones its settings would build (injection)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    from .config import ConfigStore
    from .events import EventRecorder
    from .jobs._coord import Coordinator
    from .jobs._schedules import ScheduleStore
    from .telemetry._store import SnapshotStore

__all__ = ["InjectedBackends"]

#: The methods each injected backend must have, by parameter name (their interfaces' methods).
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "events": ("append", "get", "read_stream", "read_all", "head", "close"),
    "config_store": ("read", "version", "entry", "history", "commit", "watch", "beat", "forget", "nodes", "close"),
    "coordinator": ("claim", "get", "delete", "incr", "take_token", "acquire_lease", "release_lease", "close"),
    "schedule_store": ("put", "record_run", "delete", "get", "load"),
    "snapshot_store": ("push", "read", "reset_after_fork", "close"),
}


@dataclass(frozen=True)
class InjectedBackends:
    """The backends a Foundation uses as given; ``None``: built from the settings on first use.

    Attributes:
        events: the event store (any tier: each service checks the tier it needs).
        config_store: the configuration store under ``fnd.config``.
        coordinator: locks, counters and rate limits of the jobs service.
        schedule_store: where ``fnd.jobs.schedules`` keeps schedules.
        snapshot_store: where telemetry pushes its deltas (used when telemetry is enabled).
    """

    events: EventRecorder | None = None
    config_store: ConfigStore | None = None
    coordinator: Coordinator | None = None
    schedule_store: ScheduleStore | None = None
    snapshot_store: SnapshotStore | None = None

    def __post_init__(self) -> None:
        """Refuse, before anything starts, an object that lacks a method of its interface.

        Raises:
            ValidationError: an injected backend lacks methods (``errors`` maps the parameter to them).
        """
        problems: dict[str, str] = {}
        for f in fields(self):
            given: Any = getattr(self, f.name)
            if given is None:
                continue
            missing = [m for m in REQUIRED_METHODS[f.name] if not callable(getattr(given, m, None))]
            if missing:
                problems[f.name] = f"{type(given).__name__} lacks {', '.join(missing)}"
        if problems:
            described = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
            raise ValidationError(f"Foundation: injected backends are not of their interface ({described})",
                                  errors=problems)
