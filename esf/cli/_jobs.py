"""``esf jobs …``: enqueue a job and look at its status."""

from __future__ import annotations

import argparse

from ._common import CommandError, load_foundation, parse_json_arg, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="enqueue jobs and read their status")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND")

    p = jsub.add_parser("enqueue", help="enqueue a declared job")
    p.add_argument("name")
    p.add_argument("--args", default="[]", help="JSON list of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--queue", default=None)
    p.add_argument("--correlation-id", default=None)
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--countdown", type=float, default=None)
    p.add_argument("--wait", type=float, default=None, help="wait this many seconds for the result")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_enqueue)

    p = jsub.add_parser("status", help="a job's status")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_status)

    p = jsub.add_parser("list", help="the declared jobs")
    p.set_defaults(handler=_list)
    jobs.set_defaults(handler=lambda _a: _usage(jobs))


def _enqueue(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    pos = parse_json_arg(args.args, "--args")
    kw = parse_json_arg(args.kwargs, "--kwargs")
    if not isinstance(pos, list):
        raise CommandError("--args must be a JSON list")
    if not isinstance(kw, dict):
        raise CommandError("--kwargs must be a JSON object")
    job = fnd.jobs.get(args.name)
    handle = job.enqueue_with(pos, kw, queue=args.queue, correlation_id=args.correlation_id,
                              idempotency_key=args.idempotency_key, countdown=args.countdown)
    out = {"id": handle.id, "job": handle.name, "correlation_id": handle.correlation_id,
           "duplicate": handle.duplicate}
    if args.wait is not None:
        out["result"] = handle.wait(args.wait)
    if args.json:
        print_json(out)
    else:
        print(handle.id)
        if "result" in out:
            print(out["result"])
    return 0


def _status(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    status = fnd.jobs.status(args.id)
    if args.json:
        print_json({"id": args.id, "status": status})
    else:
        print(status)
    return 0


def _list(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    for name in fnd.jobs.names():
        job = fnd.jobs.get(name)
        print(f"{name}  queue={job.options.queue} retries={job.options.retries} timeout={job.options.timeout_s}s")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
