"""The event store: durable, ordered, idempotent appends; job history as events.

Public API::

    store = create_event_store(settings)          # SqlEventStore on PostgreSQL or SQLite
    store.append(Event("order.created", {"user_id": 123}, correlation_id="c-9"))
    store.append([e1, e2], expected_version=3)     # one stream, all or nothing
    store.get(event_id); store.read_stream("order-42"); store.read_all(after_position=n)
    timeline(store, "c-9")                         # everything that happened for one request

Validation rules (event types, stream ids, JSON, sizes) are documented in
``esf.events._validation`` and re-exported here as constants.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency
from ._contract import (
    AppendResult,
    EventRecorder,
    EventStore,
    PendingAppend,
    QueryableEventStore,
    TransactionalEventStore,
    require_capability,
)
from ._job_history import JOB_EVENT_TYPES, JobHistoryHooks, job_stream_id
from ._memory import InMemoryEventRecorder
from ._model import Event, FrozenDict, FrozenList, StoredEvent
from ._query import Filter, Page, Q, Query
from ._timeline import render_timeline, timeline
from ._validation import (
    DEFAULT_STREAM_ID,
    EVENT_TYPE_RE,
    MAX_EVENT_TYPE_CHARS,
    MAX_REF_CHARS,
    MAX_STREAM_ID_CHARS,
    STREAM_ID_RE,
)

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "DEFAULT_STREAM_ID",
    "EVENT_TYPE_RE",
    "JOB_EVENT_TYPES",
    "MAX_EVENT_TYPE_CHARS",
    "MAX_REF_CHARS",
    "MAX_STREAM_ID_CHARS",
    "STREAM_ID_RE",
    "AppendResult",
    "Event",
    "EventRecorder",
    "EventStore",
    "Filter",
    "Page",
    "Q",
    "Query",
    "FrozenDict",
    "FrozenList",
    "InMemoryEventRecorder",
    "JobHistoryHooks",
    "PendingAppend",
    "QueryableEventStore",
    "StoredEvent",
    "TransactionalEventStore",
    "create_event_store",
    "job_stream_id",
    "render_timeline",
    "require_capability",
    "timeline",
]

#: Name of the event store backend in the ``esf.plugins`` entry-point group.
ENTRY_POINT = "events.sqlalchemy"
#: File (under ``settings.data_dir``) of the local spool used while PostgreSQL is unreachable.
SPOOL_FILE = "events-spool.sqlite"


def _backend_class() -> Any:
    for ep in entry_points(group="esf.plugins"):
        if ep.name == ENTRY_POINT:
            return ep.load()
    # Not installed with its entry points (a source checkout): import lazily.
    try:
        from ..plugins.sqlalchemy_events import SqlEventStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - the plugin ships with ESF
        raise MissingDependency(f"the SQLAlchemy event store plugin is not importable ({exc}); reinstall esf") from exc
    return SqlEventStore


def create_event_store(settings: Settings, **options: Any) -> EventStore:
    """The event store described by ``settings``.

    ``settings.events.backend`` names it: ``sqlalchemy`` (the default, described
    below), ``memory`` (:class:`InMemoryEventRecorder`, the recorder tier only) or
    any ``events.<name>`` entry point of group ``esf.plugins``, whose object has a
    ``from_settings(settings, **options)`` class method.

    The backend follows ``settings.effective_database_url``: PostgreSQL
    (``postgresql://…``, driven by psycopg 3) or SQLite (a file under
    ``settings.data_dir`` by default). Migrations run on first use
    (idempotent; safe with concurrent processes). On PostgreSQL, appends made
    while the server is unreachable are spooled to
    ``<data_dir>/events-spool.sqlite`` and flushed in order when it is back.

    Parameters:
        settings: the Foundation's settings.
        options: extra keyword arguments for the backend (e.g. ``pool_size``, ``migrate``).

    Raises:
        ValidationError: unsupported database URL.
        MissingDependency: the backend plugin cannot be imported.
        SettingsError: no backend is registered under ``events.<backend>``, or two are.
    """
    if settings.events.backend != "sqlalchemy":
        from .._plugins import load_plugin

        backend = load_plugin(f"events.{settings.events.backend}", setting="events.backend")
        # Any tier will do here: each service checks the tier it needs when it needs it.
        chosen: EventStore = backend.from_settings(settings, **options)
        return chosen
    url = settings.effective_database_url
    spool_path = settings.data_path / SPOOL_FILE if url.startswith("postgres") else None
    options.setdefault("spool_path", spool_path)
    options.setdefault("spool_max_attempts", settings.events.spool_max_attempts)
    options.setdefault("connect_timeout_s", settings.resilience.database_connect_timeout_s)
    options.setdefault("statement_timeout_s", settings.resilience.database_statement_timeout_s)
    options.setdefault("read_timeout_s", settings.resilience.database_read_timeout_s)
    store: EventStore = _backend_class()(
        url,
        max_event_bytes=settings.events.max_event_bytes,
        node=settings.node,
        **options,
    )
    return store
