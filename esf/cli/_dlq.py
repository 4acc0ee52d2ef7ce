"""``esf dlq …``: list (paged), count, show, replay and purge dead-lettered jobs."""

from __future__ import annotations

import argparse
import sys

from ..jobs._deadletter import DEFAULT_BATCH_SIZE, DEFAULT_PAGE_SIZE
from ._common import CommandError, load_foundation, parse_duration, parse_json_arg, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="dead-letter queues")
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND")

    p = dsub.add_parser("list", help="list dead-lettered jobs, oldest first, one page at a time")
    p.add_argument("--queue", default=None)
    p.add_argument("--limit", type=int, default=DEFAULT_PAGE_SIZE, help="entries per page (default %(default)s)")
    p.add_argument("--cursor", default=None, help="the next-page cursor printed by the previous page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = dsub.add_parser("depth", help="entries per dead-letter queue (the broker's count; reads no entry)")
    p.add_argument("--queue", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_depth)

    p = dsub.add_parser("show", help="show one entry with its traceback")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    p = dsub.add_parser("replay", help="send entries back to their queue")
    p.add_argument("ids", nargs="*")
    p.add_argument("--all", action="store_true")
    p.add_argument("--queue", default=None)
    p.add_argument("--args", default=None, help="JSON list: replay one entry with corrected arguments")
    p.add_argument("--kwargs", default=None, help="JSON object: corrected keyword arguments")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="entries per batch (default %(default)s)")
    p.set_defaults(handler=_replay)

    p = dsub.add_parser("purge", help="remove entries")
    p.add_argument("--queue", default=None)
    p.add_argument("--older-than", default=None, help="only entries older than this (e.g. 7d, 12h)")
    p.add_argument("--yes", action="store_true", help="required to purge every entry of every queue")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="entries per batch (default %(default)s)")
    p.set_defaults(handler=_purge)
    dlq.set_defaults(handler=lambda _a: _usage(dlq))


def _list(args: argparse.Namespace) -> int:
    page = load_foundation(args.app).jobs.dlq.list(args.queue, limit=args.limit, cursor=args.cursor)
    if args.json:
        print_json({"entries": [e.to_dict() for e in page], "next_cursor": page.next_cursor})
        return 0
    if not page.entries and args.cursor is None:
        print("no dead-lettered jobs")
    for e in page:
        s = e.summary()
        print(f"{s['id']}  {s['dead_lettered_at']}  {s['queue']}  {s['job']}  {s['reason']}  "
              f"attempts={s['attempts']}  {s['error'] or ''}")
    if page.next_cursor is not None:
        print(f"more: esf dlq list --limit {args.limit} --cursor {page.next_cursor}"
              + (f" --queue {args.queue}" if args.queue else ""))
    return 0


def _depth(args: argparse.Namespace) -> int:
    depth = load_foundation(args.app).jobs.dlq.depth(args.queue)
    if args.json:
        print_json(depth)
        return 0
    for queue, n in depth.items():
        print(f"{queue}.dlq  {n}")
    return 0


class _Progress:
    """Prints a line to stderr after each batch of a replay or purge."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.removed = 0
        self.read = 0

    def __call__(self, removed: int, read: int) -> None:
        self.removed += removed
        self.read += read
        print(f"{self.verb} {self.removed} of {self.read} entries read", file=sys.stderr, flush=True)


def _show(args: argparse.Namespace) -> int:
    entry = load_foundation(args.app).jobs.dlq.show(args.id)
    if args.json:
        print_json(entry.to_dict())
        return 0
    for key, value in entry.to_dict().items():
        if key != "traceback":
            print(f"{key:>18}: {value}")
    if entry.traceback:
        print(entry.traceback)
    return 0


def _replay(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise CommandError("name entry ids to replay, or --all")
    if args.ids and args.all:
        raise CommandError("give entry ids or --all, not both")
    new_args = parse_json_arg(args.args, "--args") if args.args is not None else None
    new_kwargs = parse_json_arg(args.kwargs, "--kwargs") if args.kwargs is not None else None
    if new_args is not None and not isinstance(new_args, list):
        raise CommandError("--args must be a JSON list")
    if new_kwargs is not None and not isinstance(new_kwargs, dict):
        raise CommandError("--kwargs must be a JSON object")
    sent = load_foundation(args.app).jobs.dlq.replay(None if args.all else args.ids, queue=args.queue,
                                                     args=new_args, kwargs=new_kwargs, batch_size=args.batch_size,
                                                     progress=_Progress("replayed"))
    for job_id in sent:
        print(f"replayed {job_id}")
    print(f"{len(sent)} job(s) replayed")
    return 0


def _purge(args: argparse.Namespace) -> int:
    if args.queue is None and args.older_than is None and not args.yes:
        raise CommandError("this purges every entry of every queue: add --yes, or narrow it with --queue/--older-than")
    older = parse_duration(args.older_than).total_seconds() if args.older_than else None
    n = load_foundation(args.app).jobs.dlq.purge(args.queue, older_than_s=older, batch_size=args.batch_size,
                                                 progress=_Progress("purged"))
    print(f"{n} entr{'y' if n == 1 else 'ies'} purged")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
