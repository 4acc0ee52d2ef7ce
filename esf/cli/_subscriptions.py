"""``esf subscriptions …``: list, show, pause, resume, reset and delete subscriptions and projections."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from ..errors import ValidationError
from ._common import CommandError, load_foundation, parse_duration, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subs = sub.add_parser("subscriptions", help="event subscriptions and projections")
    ssub = subs.add_subparsers(dest="subscriptions_command", metavar="COMMAND")

    p = ssub.add_parser("list", help="every subscription with its checkpoint and lag")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = ssub.add_parser("show", help="one subscription: checkpoint, lag, batches in flight, dead batches")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    for verb, text in (("pause", "send no new batch (batches in flight finish)"), ("resume", "send batches again"),
                       ("delete", "forget the stored state (checkpoint, batches)")):
        p = ssub.add_parser(verb, help=text)
        p.add_argument("name")
        p.set_defaults(handler=_control, verb=verb)

    p = ssub.add_parser("reset", help="deliver again from a position or a time")
    p.add_argument("name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=int, default=None, metavar="POSITION",
                       help="deliver the events after this position (0: from the beginning)")
    where.add_argument("--to-time", default=None, metavar="T",
                       help="deliver the events recorded from T on: ISO 8601 with a time zone, or an age (2h, 7d)")
    p.set_defaults(handler=_reset)
    subs.set_defaults(handler=lambda _a: _usage(subs))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _list(args: argparse.Namespace) -> int:
    statuses = load_foundation(args.app).subscriptions.list()
    if args.json:
        print_json([s.to_dict() for s in statuses])
        return 0
    if not statuses:
        print("no subscriptions")
    for s in statuses:
        state = "paused" if s.paused else "running"
        print(f"{s.name}  {s.spec.get('kind', 'subscription')}  {state}  checkpoint={s.checkpoint}  head={s.head}  "
              f"lag={s.lag_events} events / {s.lag_seconds:.1f} s  in_flight={s.in_flight}  queued={s.queued}  "
              f"dead={s.dead}")
    return 0


def _show(args: argparse.Namespace) -> int:
    status = load_foundation(args.app).subscriptions.status(args.name)
    if args.json:
        print_json(status.to_dict())
        return 0
    for key, value in status.to_dict().items():
        if key not in ("spec", "dead_batches"):
            print(f"{key:>15}: {value}")
    for key, value in status.spec.items():
        print(f"{key:>15}: {value}")
    for dead in status.dead_batches:
        print(f"dead batch {dead['batch']} (job {dead['job_id']}): positions {dead['positions']}: {dead['error']}")
    return 0


def _control(args: argparse.Namespace) -> int:
    service = load_foundation(args.app).subscriptions
    getattr(service, args.verb)(args.name)
    print(f"{args.name}: {args.verb}d" if args.verb != "resume" else f"{args.name}: resumed")
    return 0


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a time zone, or an age such as ``2h`` (that long before now).

    Raises:
        CommandError: neither.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.now(UTC) - parse_duration(text)
        except ValidationError:
            raise CommandError(f"--to-time: {text!r} is neither an ISO 8601 time nor an age like 2h") from None
    if when.tzinfo is None:
        raise CommandError("--to-time: give a time zone (e.g. 2026-12-03T08:00:00+00:00)")
    return when


def _reset(args: argparse.Namespace) -> int:
    service = load_foundation(args.app).subscriptions
    if args.to is not None:
        position = service.reset(args.name, to=args.to)
    else:
        position = service.reset(args.name, to_time=parse_time(args.to_time))
    print(f"{args.name}: checkpoint set to {position}; events after it will be delivered again")
    return 0
