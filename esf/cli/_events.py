"""``esf db …`` and ``esf events …``: migrations, append, get, tail, prune, timeline, spool.

Handlers are thin: they parse arguments, get the store from the Foundation
(``load_foundation(args.app).events``) and call one ``run_*`` function that
takes the store explicitly (tests call those directly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ValidationError
from ..events import Event, StoredEvent, TransactionalEventStore, render_timeline, require_capability, timeline
from ..events._timeline import timeline_json
from ._common import CommandError, load_foundation, parse_duration, parse_json_arg

if TYPE_CHECKING:
    from ..events import EventStore

__all__ = [
    "register",
    "run_append",
    "run_get",
    "run_prune",
    "run_spool_list",
    "run_spool_retry",
    "run_tail",
    "run_timeline",
    "run_upgrade",
]



# -- run_* functions: the logic, with an explicit store ---------------------


def format_event(e: StoredEvent) -> str:
    """One readable line: position, time, type, stream@version, correlation, data."""
    corr = f" corr={e.correlation_id}" if e.correlation_id else ""
    data = json.dumps(e.to_dict()["data"], sort_keys=True, ensure_ascii=False)
    if len(data) > 200:
        data = data[:199] + "…"
    return (
        f"#{e.position}  {e.recorded_at.isoformat(timespec='milliseconds')}  {e.event_type}  "
        f"{e.stream_id}@{e.stream_version}{corr}  {data}"
    )


def _emit(e: StoredEvent, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write(format_event(e) + "\n")
    out.flush()


def run_upgrade(url: str, out: TextIO | None = None) -> int:
    """Migrate the event store database at ``url`` to the newest revision."""
    out = out or sys.stdout
    from ..plugins.sqlalchemy_events import redact  # type: ignore[import-not-found,unused-ignore]
    from ..plugins.sqlalchemy_events.migrations import upgrade  # type: ignore[import-not-found,unused-ignore]

    revision = upgrade(url)
    out.write(f"event store database {redact(url)} is at revision {revision}\n")
    return 0


def run_append(
    store: EventStore,
    event_type: str,
    data: Any,
    *,
    stream: str | None = None,
    correlation_id: str | None = None,
    parent_id: str | None = None,
    event_id: str | None = None,
    metadata: Any = None,
    expected_version: int | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Append one event and print it (or say it was spooled)."""
    out = out or sys.stdout
    event = Event(
        event_type,
        data,
        correlation_id=correlation_id,
        parent_id=parent_id,
        stream_id=stream,
        event_id=event_id,
        metadata={} if metadata is None else metadata,
    )
    result = store.append(event, expected_version=expected_version)
    if result.pending is not None:
        ids = ", ".join(result.pending.event_ids)
        if as_json:
            out.write(json.dumps({"pending": True, "event_ids": list(result.pending.event_ids)}) + "\n")
        else:
            out.write(f"database unreachable: event {ids} spooled locally; it will be written when it is back\n")
        return 0
    for e in result:
        if as_json:
            out.write(json.dumps({**e.to_dict(), "already_stored": e.event_id in result.already_stored}) + "\n")
        else:
            note = "  (already stored)" if e.event_id in result.already_stored else ""
            out.write(format_event(e) + note + "\n")
    return 0


def run_get(store: EventStore, event_id: str, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Print one event (full JSON with ``--json``)."""
    out = out or sys.stdout
    e = store.get(event_id)
    if as_json:
        out.write(json.dumps(e.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write(format_event(e) + "\n")
        if e.metadata:
            out.write(f"  metadata: {json.dumps(e.to_dict()['metadata'], sort_keys=True, ensure_ascii=False)}\n")
    return 0


def run_tail(
    store: EventStore,
    *,
    types: Sequence[str] = (),
    from_position: int | None = None,
    poll_interval_s: float = 0.5,
    max_events: int | None = None,
    timeout_s: float | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print new events as they are committed (polling by position) until ``max_events`` or ``timeout_s``.

    Starts after the current head (only new events) unless ``from_position``
    is given. Positions are commit-ordered, so resuming from the last one
    printed never skips an event.
    """
    out = out or sys.stdout
    last = store.head() if from_position is None else from_position
    wanted = set(types)
    shown = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        batch = store.read_all(after_position=last, limit=500)
        for e in batch:
            last = e.position
            if wanted and e.event_type not in wanted:
                continue
            _emit(e, as_json, out)
            shown += 1
            if max_events is not None and shown >= max_events:
                return 0
        if batch:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        sleep(poll_interval_s)


def run_prune(
    store: EventStore, older_than: str, *, types: Sequence[str] | None = None, out: TextIO | None = None
) -> int:
    """Prune events older than a duration (``90d``) and print how many were deleted."""
    out = out or sys.stdout
    require_capability(store, TransactionalEventStore, needed_for="esf events prune")
    age = parse_duration(older_than)
    deleted = store.prune(older_than=age, types=list(types) if types else None)
    scope = f" of type {', '.join(types)}" if types else ""
    out.write(
        f"pruned {deleted} event(s){scope} older than {older_than} "
        "(kept: the latest event of each stream and events not yet processed by every subscription)\n"
    )
    return 0


def run_timeline(
    store: EventStore, correlation_id: str, *, as_json: bool = False, limit: int = 10_000, out: TextIO | None = None
) -> int:
    """Print the timeline of one correlation id (readable, or JSON with ``--json``)."""
    out = out or sys.stdout
    events = timeline(store, correlation_id, limit=limit)
    if as_json:
        out.write(json.dumps(timeline_json(events), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write(render_timeline(correlation_id, events) + "\n")
    return 0 if events else 1


def run_spool_list(store: EventStore, *, as_json: bool = False, limit: int = 100, out: TextIO | None = None) -> int:
    """Print the spool's quarantined entries (a read: nothing moves); exit status 1 when there are some."""
    out = out or sys.stdout
    require_capability(store, TransactionalEventStore, needed_for="esf events spool list")
    entries = store.spool_quarantine(limit)
    if as_json:
        rows = [
            {"id": e.id, "events": e.n_events, "attempts": e.attempts, "streams": list(e.streams),
             "created_at": e.created_at, "quarantined_at": e.quarantined_at, "error": e.error}
            for e in entries
        ]
        out.write(json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return 1 if entries else 0
    if not entries:
        out.write("no quarantined spool entries\n")
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.quarantined_at))
        streams = ", ".join(e.streams[:5]) + (" …" if len(e.streams) > 5 else "")
        out.write(f"entry {e.id}  {e.n_events} event(s)  streams {streams}  {e.attempts} attempt(s)  "
                  f"quarantined {when}\n    {e.error}\n")
    out.write(f"{len(entries)} quarantined entr{'y' if len(entries) == 1 else 'ies'}; "
              "`esf events spool retry ID…` (or --all) writes them again\n")
    return 1


def run_spool_retry(
    store: EventStore,
    entry_ids: Sequence[int] | None,
    *,
    wait_s: float = 60.0,
    out: TextIO | None = None,
) -> int:
    """Put quarantined entries (all when ``entry_ids`` is None) back in the spool and wait up to ``wait_s``
    seconds for them to be written. Exit status 0 when all were written, 1 otherwise (the reason is printed).
    """
    out = out or sys.stdout
    require_capability(store, TransactionalEventStore, needed_for="esf events spool retry")
    ids = store.retry_quarantined(entry_ids)
    if not ids:
        out.write("no such quarantined spool entry\n" if entry_ids else "no quarantined spool entries\n")
        return 1 if entry_ids else 0
    out.write(f"entries {', '.join(map(str, ids))} put back in the spool; writing…\n")
    flushed = store.flush_spool(timeout=wait_s)
    again = {e.id: e for e in store.spool_quarantine(10_000) if e.id in set(ids)}
    for entry_id in ids:
        if entry_id in again:
            out.write(f"entry {entry_id}: quarantined again: {again[entry_id].error}\n")
        elif flushed:
            out.write(f"entry {entry_id}: written\n")
        else:
            out.write(f"entry {entry_id}: still spooled after {wait_s:g} s (is the database reachable?)\n")
    return 0 if flushed and not again else 1


# -- handlers: argparse → run_* ------------------------------------------------


def _store(args: argparse.Namespace) -> EventStore:
    fnd = load_foundation(args.app)
    store: EventStore | None = getattr(fnd, "events", None)
    if store is None:
        raise CommandError("this Foundation has no event store (fnd.events)")
    return store


def _json_object(text: str | None, what: str) -> Any:
    if text is None:
        return None
    value = parse_json_arg(text, what)
    if not isinstance(value, dict):
        raise ValidationError(f"{what}: must be a JSON object, e.g. '{{\"user_id\": 123}}'")
    return value


def _upgrade(args: argparse.Namespace) -> int:
    url = args.database_url
    if url is None:
        settings = getattr(load_foundation(args.app), "settings", None)
        if settings is None:
            from ..settings import Settings

            settings = Settings.from_env()
        url = settings.effective_database_url
    return run_upgrade(url)


def _append(args: argparse.Namespace) -> int:
    return run_append(
        _store(args),
        args.type,
        _json_object(args.data, "--data") or {},
        stream=args.stream,
        correlation_id=args.correlation_id,
        parent_id=args.parent_id,
        event_id=args.event_id,
        metadata=_json_object(args.metadata, "--metadata"),
        expected_version=args.expected_version,
        as_json=args.json,
    )


def _get(args: argparse.Namespace) -> int:
    return run_get(_store(args), args.event_id, as_json=args.json)


def _tail(args: argparse.Namespace) -> int:
    return run_tail(
        _store(args),
        types=args.type or (),
        from_position=args.from_position,
        poll_interval_s=args.poll_interval,
        max_events=args.max_events,
        timeout_s=args.timeout,
        as_json=args.json,
    )


def _prune(args: argparse.Namespace) -> int:
    return run_prune(_store(args), args.older_than, types=args.type)


def _timeline(args: argparse.Namespace) -> int:
    return run_timeline(_store(args), args.correlation_id, as_json=args.json, limit=args.limit)


def _spool_list(args: argparse.Namespace) -> int:
    return run_spool_list(_store(args), as_json=args.json, limit=args.limit)


def _spool_retry(args: argparse.Namespace) -> int:
    if not args.all and not args.entry_ids:
        raise ValidationError("esf events spool retry: give entry ids (see `esf events spool list`) or --all")
    if args.all and args.entry_ids:
        raise ValidationError("esf events spool retry: give entry ids or --all, not both")
    return run_spool_retry(_store(args), None if args.all else args.entry_ids, wait_s=args.wait)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``esf db`` and ``esf events`` to the main parser."""
    db = subparsers.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="run the event store migrations (idempotent)")
    up.add_argument("--database-url", default=None, help="default: the Foundation's settings.effective_database_url")
    up.set_defaults(handler=_upgrade)

    ev = subparsers.add_parser("events", help="the event store: append, get, tail, prune, timeline")
    sub = ev.add_subparsers(dest="events_command", metavar="ACTION")

    p = sub.add_parser("append", help="append one event")
    p.add_argument("type", help="event type, e.g. order.created")
    p.add_argument("--data", default=None, help="JSON object, e.g. '{\"user_id\": 123}'")
    p.add_argument("--stream", default=None, help="stream id (default $global)")
    p.add_argument("--correlation-id", default=None)
    p.add_argument("--parent-id", default=None)
    p.add_argument("--event-id", default=None, help="UUID; appending the same id and content again is a no-op")
    p.add_argument("--metadata", default=None, help="JSON object")
    p.add_argument("--expected-version", type=int, default=None, help="the stream's current version (0: new)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_append)

    p = sub.add_parser("get", help="show one event")
    p.add_argument("event_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_get)

    p = sub.add_parser("tail", help="follow new events")
    p.add_argument("--type", action="append", help="only this event type (repeatable)")
    p.add_argument("--from-position", type=int, default=None, help="start after this position (default: the head)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between polls when idle")
    p.add_argument("--max-events", type=int, default=None, help="stop after printing this many events")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many idle-or-not seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_tail)

    p = sub.add_parser("prune", help="delete old events (keeps what streams and subscriptions need)")
    p.add_argument("--older-than", required=True, help="age, e.g. 90d, 12h")
    p.add_argument("--type", action="append", help="only this event type (repeatable)")
    p.set_defaults(handler=_prune)

    p = sub.add_parser("timeline", help="everything that happened for one correlation id")
    p.add_argument("correlation_id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=10_000)
    p.set_defaults(handler=_timeline)

    p = sub.add_parser("spool", help="the local spool's quarantine: entries the database kept refusing")
    spool = p.add_subparsers(dest="spool_command", metavar="ACTION")
    q = spool.add_parser("list", help="show the quarantined entries (exit status 1 when there are some)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=100)
    q.set_defaults(handler=_spool_list)
    q = spool.add_parser("retry", help="put quarantined entries back in the spool, at their place, and write them")
    q.add_argument("entry_ids", nargs="*", type=int, metavar="ID")
    q.add_argument("--all", action="store_true", help="every quarantined entry")
    q.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the writes (default 60)")
    q.set_defaults(handler=_spool_retry)

    from ._events_query import register_query

    register_query(sub)
