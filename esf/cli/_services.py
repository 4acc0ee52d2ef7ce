"""``esf services``: every foundation service task with its queue, DLQ, default schedule and last run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from ._common import load_foundation, print_json

if TYPE_CHECKING:
    from ..services import ServiceTaskStatus


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("services", help="the foundation's own service tasks: queues, DLQs, schedules, last run")
    p.add_argument("--json", action="store_true", help="a JSON list: registry fields, schedule state, last run")
    p.set_defaults(handler=_services)


def _services(args: argparse.Namespace) -> int:
    fnd = load_foundation(args.app)
    rows = fnd.services.status()
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        render(rows, sys.stdout)
    return 0


def render(rows: list[ServiceTaskStatus], out: TextIO) -> None:
    """A table: task, queue, DLQ, retries, schedule, last run; then any store that could not be read."""
    header = ("TASK", "QUEUE", "DLQ", "RETRIES", "TIMEOUT", "SCHEDULE", "LAST RUN")
    lines = [header]
    for r in rows:
        t = r.task
        if t.schedule is None:
            schedule = "-"
        else:
            state = "on" if r.scheduled else ("off" if not t.schedule.enabled else "not yet in store")
            schedule = f"{t.schedule.describe()} ({state}; {t.schedule.setting or 'code'})"
        last = "-" if r.last_run is None else f"{r.last_run['type'].removeprefix('job.')} {r.last_run['at']}"
        name = t.name if t.declared else f"{t.name} (plain job)"
        lines.append((name, t.queue, t.dlq, str(t.retries), f"{t.timeout_s:g}s", schedule, last))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")
    problems = sorted({p for r in rows for p in r.problems})
    for p in problems:
        out.write(f"warning: {p}\n")
