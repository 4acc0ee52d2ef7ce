"""``esf config scheduled …``: configuration batches that apply at a given time."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from ._common import CommandError, load_foundation, print_json


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scheduled list|show|cancel|add`` under ``esf config``."""
    parser = sub.add_parser("scheduled", help="configuration batches that apply at a given time")
    ssub = parser.add_subparsers(dest="scheduled_command", metavar="SUBCOMMAND")

    p = ssub.add_parser("list", help="pending and refused batches, by time")
    p.add_argument("--all", action="store_true", help="also applied and cancelled ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = ssub.add_parser("show", help="one batch with its changes and state")
    p.add_argument("id")
    p.set_defaults(handler=_show)

    p = ssub.add_parser("cancel", help="cancel a pending (or refused) batch")
    p.add_argument("id")
    p.set_defaults(handler=_cancel)

    p = ssub.add_parser("add", help="apply a JSON object {path: value} from FILE or - (stdin) at --at")
    p.add_argument("file")
    p.add_argument("--at", required=True, help="ISO 8601 time with its offset, e.g. 2026-12-03T22:00:00+00:00")
    p.add_argument("--expected-version", type=int, default=None)
    p.add_argument("--actor", default=None)
    p.set_defaults(handler=_add)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)


def _list(args: argparse.Namespace) -> int:
    batches = load_foundation(args.app).config.deferred.scheduled(include_done=args.all)
    if args.json:
        print_json([b.to_dict() for b in batches])
        return 0
    for b in batches:
        paths = ", ".join(sorted(b.changes))
        print(f"{b.id}  {b.at.isoformat()}  {b.state:<9}  expected={b.expected_version}  {paths}"
              + (f"  ({b.error})" if b.error else ""))
    return 0


def _show(args: argparse.Namespace) -> int:
    print_json(load_foundation(args.app).config.deferred.get(args.id).to_dict())
    return 0


def _cancel(args: argparse.Namespace) -> int:
    batch = load_foundation(args.app).config.deferred.cancel(args.id)
    print(f"cancelled {batch.id} (was due {batch.at.isoformat()})")
    return 0


def _add(args: argparse.Namespace) -> int:
    try:
        at = datetime.fromisoformat(args.at)
    except ValueError:
        raise CommandError(f"--at: {args.at!r} is not an ISO 8601 time") from None
    text = sys.stdin.read() if args.file == "-" else open(args.file).read()
    try:
        changes = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"{args.file}: not JSON ({exc})") from None
    batch = load_foundation(args.app).config.schedule_batch(changes, at=at, expected_version=args.expected_version,
                                                            actor=args.actor)
    print_json(batch.to_dict())
    return 0
