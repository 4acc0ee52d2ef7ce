"""``esf beat`` (the scheduler) and ``esf schedules …`` (list, add, remove, enable, disable)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from ._common import CommandError, load_foundation, parse_json_arg, print_json

if TYPE_CHECKING:
    from ..jobs._schedules import ScheduleService


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("beat", help="run the scheduler (any number may run; one leads and fires)")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between ticks (default 1)")
    p.add_argument("--lease-ttl", type=float, default=10.0,
                   help="seconds before another beat takes over from a dead leader (default 10)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(handler=_beat)

    sched = sub.add_parser("schedules", help="list, add, remove, enable and disable schedules at run time")
    ssub = sched.add_subparsers(dest="schedules_command", metavar="COMMAND")

    p = ssub.add_parser("list", help="the stored schedules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = ssub.add_parser("add", help="add a schedule (beat picks it up on its next tick)")
    p.add_argument("name")
    p.add_argument("--job", required=True, help="the job to enqueue")
    timing = p.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help="5-field crontab, UTC (e.g. '*/5 * * * *')")
    timing.add_argument("--every", type=float, help="seconds between fires")
    p.add_argument("--args", default="[]", help="JSON list of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--queue", default=None)
    p.add_argument("--disabled", action="store_true", help="store it disabled")
    p.add_argument("--no-job-check", action="store_true",
                   help="accept a job this application does not declare (declared by the workers' application)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_add)

    p = ssub.add_parser("update", help="change a schedule (beat follows it from its next tick)")
    p.add_argument("name")
    p.add_argument("--job", default=None)
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--cron", default=None, help="5-field crontab, UTC (replaces --every)")
    timing.add_argument("--every", type=float, default=None, help="seconds between fires (replaces --cron)")
    p.add_argument("--args", default=None, help="JSON list of positional arguments")
    p.add_argument("--kwargs", default=None, help="JSON object of keyword arguments")
    p.add_argument("--queue", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_update)

    for verb, helptext in (("remove", "remove a schedule"), ("enable", "enable a schedule"),
                           ("disable", "disable a schedule (kept, not fired)")):
        p = ssub.add_parser(verb, help=helptext)
        p.add_argument("name")
        p.set_defaults(handler=_verb, verb=verb)
    sched.set_defaults(handler=lambda _a: _usage(sched))


def _service(args: argparse.Namespace) -> ScheduleService:
    from ..jobs._schedules import schedule_service

    return schedule_service(load_foundation(args.app))


def _beat(args: argparse.Namespace) -> int:
    import threading

    from esf.beat import install_signal_handlers, run_beat

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fnd = load_foundation(args.app)
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        run_beat(fnd, tick_s=args.tick, lease_ttl_s=args.lease_ttl, stop=stop)
    finally:
        fnd.close()
    return 0


def _list(args: argparse.Namespace) -> int:
    schedules = _service(args).list()
    if args.json:
        print_json([s.to_dict() for s in schedules])
        return 0
    for s in schedules:
        timing = f"cron={s.cron!r}" if s.cron else f"every={s.every:g}s"
        nxt = s.next_run_at.isoformat(timespec="seconds") if s.next_run_at else "-"
        last = s.last_run_at.isoformat(timespec="seconds") if s.last_run_at else "-"
        state = "enabled" if s.enabled else "disabled"
        print(f"{s.name}  job={s.job} {timing} {state} next={nxt} last={last} origin={s.origin}")
    return 0


def _arguments(args_text: str, kwargs_text: str) -> tuple[list[Any], dict[str, Any]]:
    pos: Any = parse_json_arg(args_text, "--args")
    kw: Any = parse_json_arg(kwargs_text, "--kwargs")
    if not isinstance(pos, list):
        raise CommandError("--args must be a JSON list")
    if not isinstance(kw, dict):
        raise CommandError("--kwargs must be a JSON object")
    return pos, kw


def _add(args: argparse.Namespace) -> int:
    from ..jobs._schedules import Schedule

    pos, kw = _arguments(args.args, args.kwargs)
    schedule = Schedule(name=args.name, job=args.job, cron=args.cron, every=args.every, args=tuple(pos), kwargs=kw,
                        queue=args.queue, enabled=not args.disabled)
    stored = _service(args).add(schedule, require_job=not args.no_job_check)
    if args.json:
        print_json(stored.to_dict())
    else:
        nxt = stored.next_run_at.isoformat(timespec="seconds") if stored.next_run_at else "-"
        print(f"added {stored.name}: next run {nxt}")
    return 0


def _update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("job", "cron", "every", "queue")
                               if getattr(args, k) is not None}
    if args.args is not None or args.kwargs is not None:
        pos, kw = _arguments(args.args or "[]", args.kwargs or "{}")
        if args.args is not None:
            changes["args"] = pos
        if args.kwargs is not None:
            changes["kwargs"] = kw
    if not changes:
        raise CommandError("nothing to change: give --job, --cron, --every, --args, --kwargs or --queue")
    stored = _service(args).update(args.name, **changes)
    if args.json:
        print_json(stored.to_dict())
    else:
        nxt = stored.next_run_at.isoformat(timespec="seconds") if stored.next_run_at else "-"
        print(f"updated {stored.name}: next run {nxt}")
    return 0


def _verb(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.verb == "remove":
        service.remove(args.name)
        print(f"removed {args.name}")
    elif args.verb == "enable":
        service.enable(args.name)
        print(f"enabled {args.name}")
    else:
        service.disable(args.name)
        print(f"disabled {args.name}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
