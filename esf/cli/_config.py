"""``esf config …``: read, change, roll back and watch the configuration.

Each handler gets the service from ``load_foundation(args.app).config`` and
passes it to a ``run_*`` function, which tests call with a service they built.
"""

from __future__ import annotations

import argparse
import getpass
import json
import queue
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..config import DELETE, REDACTED, Change, ChangeEvent
from ..errors import ValidationError
from ..secrets import Secret
from ._common import CommandError, load_foundation, parse_duration, too_deep

if TYPE_CHECKING:
    from ..config import ConfigService

__all__ = [
    "register",
    "run_batch",
    "run_diff",
    "run_get",
    "run_health",
    "run_history",
    "run_nodes",
    "run_rollback",
    "run_set",
    "run_watch",
]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="read and change the configuration")
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")

    p = sub.add_parser("get", help="print a value (or the whole tree)")
    p.add_argument("path", nargs="?", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_handler(run_get))

    p = sub.add_parser("set", help="set one path (VALUE is JSON, or else a string)")
    p.add_argument("path")
    p.add_argument("value")
    p.add_argument("--secret", action="store_true", help="store VALUE (a string) as a secret: redacted everywhere")
    _write_options(p)
    p.set_defaults(handler=_handler(run_set))

    p = sub.add_parser("batch", help="apply a JSON object {path: value} from FILE or - (stdin) atomically")
    p.add_argument("file")
    _write_options(p)
    p.set_defaults(handler=_handler(run_batch))

    p = sub.add_parser("history", help="list versions, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_history))

    p = sub.add_parser("diff", help="differences from version V1 to V2")
    p.add_argument("v1", type=int)
    p.add_argument("v2", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_diff))

    p = sub.add_parser("rollback", help="write a new version equal to version V")
    p.add_argument("version", type=int)
    p.add_argument("--actor", default=None)
    p.set_defaults(handler=_handler(run_rollback))

    p = sub.add_parser("watch", help="print each new version as it is applied")
    p.add_argument("--prefix", default="")
    p.add_argument("--count", type=int, default=None, help="stop after this many versions")
    p.add_argument("--timeout", default=None, help="stop after this long (e.g. 30s, 5m)")
    p.set_defaults(handler=_handler(run_watch))

    p = sub.add_parser("nodes", help="processes using the configuration and their versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_nodes))

    p = sub.add_parser("health", help="ok or degraded, with reasons")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_health))

    from ._config_scheduled import add_commands

    add_commands(sub)


def _write_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expected-version", type=int, default=None, help="compare-and-set")
    p.add_argument("--actor", default=None, help="who makes the change (default: cli:<user>)")
    p.add_argument("--wait", action="store_true", help="return when every live process has applied it")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (with --wait)")


def _handler(run: Callable[[ConfigService, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        service: ConfigService = load_foundation(args.app).config  # type: ignore[attr-defined]
        return run(service, args)

    return handler


# -- commands -----------------------------------------------------------------


def run_get(service: ConfigService, args: argparse.Namespace) -> int:
    value = service.get(args.path)
    if args.json:
        print(_dumps(value, indent=2))
    elif isinstance(value, Mapping):
        for path, leaf in _flatten(value, args.path or ""):
            print(f"{path} = {_dumps(leaf)}")
    else:
        print(_plain(value))
    return 0


def run_set(service: ConfigService, args: argparse.Namespace) -> int:
    value = Secret(args.value) if getattr(args, "secret", False) else parse_value(args.value)
    return _write(service, {args.path: value}, args)


def run_batch(service: ConfigService, args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file!r}: {exc.strerror}") from None
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"batch: not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise too_deep("batch") from None
    if not isinstance(changes, dict):
        raise ValidationError("batch: expected a JSON object {path: value}")
    return _write(service, changes, args)


def _write(service: ConfigService, changes: Mapping[str, Any], args: argparse.Namespace) -> int:
    version = service.update_batch(
        changes,
        expected_version=args.expected_version,
        wait="all" if args.wait else None,
        timeout=args.timeout,
        actor=args.actor or _default_actor(),
    )
    print(f"version {version}")
    return 0


def run_history(service: ConfigService, args: argparse.Namespace) -> int:
    entries = service.history(limit=args.limit)
    if args.json:
        print(json.dumps([e.to_dict(with_document=False) for e in entries], indent=2))
        return 0
    for e in entries:
        what = f"rollback to {e.rollback_of}" if e.rollback_of is not None else f"{len(e.changes)} change(s)"
        print(f"{e.version:>6}  {_when(e.at)}  {e.actor or '-':<16}  {what}")
        for c in e.changes:
            print(f"        {_change_line(c)}")
    return 0


def run_diff(service: ConfigService, args: argparse.Namespace) -> int:
    changes = service.diff(args.v1, args.v2)
    if args.json:
        print(json.dumps([c.to_dict() for c in changes], indent=2))
    else:
        for c in changes:
            print(_change_line(c))
    return 0


def run_rollback(service: ConfigService, args: argparse.Namespace) -> int:
    version = service.rollback(args.version, actor=args.actor or _default_actor())
    print(f"version {version} (= version {args.version})")
    return 0


def run_watch(service: ConfigService, args: argparse.Namespace) -> int:
    events: queue.Queue[ChangeEvent] = queue.Queue()
    handle = service.subscribe(args.prefix, events.put)
    deadline = None if args.timeout is None else time.monotonic() + parse_duration(args.timeout).total_seconds()
    seen = 0
    print(f"watching {args.prefix or 'everything'} from version {service.version}", flush=True)
    try:
        while args.count is None or seen < args.count:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                event = events.get(timeout=min(wait, 1.0))
            except queue.Empty:
                continue
            seen += 1
            print(f"version {event.version}", flush=True)
            for c in event.changes:
                print(f"  {_change_line(c)}", flush=True)
    finally:
        handle()
    return 0


def run_nodes(service: ConfigService, args: argparse.Namespace) -> int:
    nodes = service.nodes()
    if args.json:
        print(json.dumps([n.to_dict() for n in nodes], indent=2))
        return 0
    current = service.version
    for n in nodes:
        mark = "" if n.version >= current else "  (behind)"
        print(f"{n.node_id:<40} pid {n.pid:<8} version {n.version:<6} seen {_when(n.last_seen)}{mark}")
    return 0


def run_health(service: ConfigService, args: argparse.Namespace) -> int:
    health = service.health()
    if args.json:
        print(json.dumps(health.to_dict(), indent=2))
    else:
        print(f"{health.status} (version {health.version}, store {health.store_version}, from {health.source})")
        for reason in health.reasons:
            print(f"  {reason}")
    return 0 if health.status == "ok" else 1


# -- helpers ------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``7``, ``true``, ``{"a": 1}``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError:
        raise too_deep("value") from None


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(value), indent=indent, sort_keys=indent is not None)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value)


def _flatten(tree: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key in sorted(tree):
        path = f"{prefix}.{key}" if prefix else key
        value = tree[key]
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, path))
        else:
            out.append((path, value))
    return out


def _change_line(c: Change) -> str:
    old = "(absent)" if c.old is DELETE else _dumps(c.old)
    new = "(removed)" if c.new is DELETE else _dumps(c.new)
    return f"{c.path}: {old} -> {new}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
