"""``esf sagas …``: list, show, retry and abort saga instances."""

from __future__ import annotations

import argparse

from ..sagas import STATUSES, SagaInstance, parse_ref
from ._common import load_foundation, print_json

_ID_HELP = "the instance: its stream saga-<name>-<id>, or <name>/<id>"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sagas = sub.add_parser("sagas", help="saga instances (process managers)")
    ssub = sagas.add_subparsers(dest="sagas_command", metavar="COMMAND")

    p = ssub.add_parser("list", help="instances, most recently changed first")
    p.add_argument("--saga", default=None, help="only the instances of this saga")
    p.add_argument("--status", default=None, choices=STATUSES)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = ssub.add_parser("show", help="one instance: status, state, steps in flight, stuck steps, timeouts")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    p = ssub.add_parser("retry", help="send the stuck steps of a stuck instance again")
    p.add_argument("id", help=_ID_HELP)
    p.set_defaults(handler=_retry)

    p = ssub.add_parser("abort", help="compensate the completed steps and end the instance aborted")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--reason", default="aborted by an operator")
    p.set_defaults(handler=_abort)
    sagas.set_defaults(handler=lambda _a: _usage(sagas))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _line(s: SagaInstance) -> str:
    extra = f"  stuck={','.join(sorted(s.stuck))}" if s.stuck else ""
    return (f"{s.stream_id}  {s.status}  v{s.version}  pending={','.join(sorted(s.pending)) or '-'}  "
            f"updated={s.updated_at.isoformat(timespec='seconds')}{extra}")


def _list(args: argparse.Namespace) -> int:
    found = load_foundation(args.app).sagas.list(args.saga, status=args.status, limit=args.limit)
    if args.json:
        print_json([s.to_dict() for s in found])
        return 0
    if not found:
        print("no saga instances")
    for s in found:
        print(_line(s))
    return 0


def _show(args: argparse.Namespace) -> int:
    saga = load_foundation(args.app).sagas.get(*parse_ref(args.id))
    if args.json:
        print_json(saga.to_dict())
        return 0
    print(_line(saga))
    print(f"  correlation_id: {saga.correlation_id}")
    print(f"  started: {saga.started_at.isoformat(timespec='seconds')}")
    print(f"  completed steps (to compensate): {', '.join(saga.completed) or '-'}")
    print(f"  timeouts: {', '.join(saga.timeouts) or '-'}")
    for run, error in sorted(saga.stuck.items()):
        print(f"  stuck {run}: {error}")
    if saga.reason:
        print(f"  reason: {saga.reason}")
    print(f"  state: {saga.state}")
    print(f"  story: esf events timeline {saga.correlation_id}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    saga = load_foundation(args.app).sagas.retry(*parse_ref(args.id))
    print(f"{saga.stream_id}: {saga.status} (stuck steps sent again)")
    return 0


def _abort(args: argparse.Namespace) -> int:
    saga = load_foundation(args.app).sagas.abort(*parse_ref(args.id), reason=args.reason)
    print(f"{saga.stream_id}: {saga.status}")
    return 0
