"""``esf projections …``: list projections, rebuild one into fresh tables and swap it in."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ._common import load_foundation, print_json

#: Seconds between two progress lines when stderr is not a terminal.
PLAIN_EVERY_S = 5.0
#: Width of the progress bar, in characters.
BAR_WIDTH = 30


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    proj = sub.add_parser("projections", help="projections: list, rebuild")
    psub = proj.add_subparsers(dest="projections_command", metavar="COMMAND")

    p = psub.add_parser("list", help="every projection: tables, checkpoint, lag, rebuild under way")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = psub.add_parser("rebuild", help="replay from position zero into fresh tables, swap them in when caught up")
    p.add_argument("name")
    p.add_argument("--restart", action="store_true",
                   help="start from zero even when an interrupted rebuild could resume")
    p.add_argument("--chunk", type=int, default=500, help="events applied per transaction (default 500)")
    p.set_defaults(handler=_rebuild)
    proj.set_defaults(handler=lambda _a: _usage(proj))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _list(args: argparse.Namespace) -> int:
    rows = load_foundation(args.app).subscriptions.projections()
    if args.json:
        print_json([{**s.to_dict(), "rebuild_position": rebuilding} for s, rebuilding in rows])
        return 0
    if not rows:
        print("no projections")
    for s, rebuilding in rows:
        state = "paused" if s.paused else "running"
        tables = ",".join(s.spec.get("tables") or []) or "-"
        extra = f"  rebuild at {rebuilding}" if rebuilding is not None else ""
        print(f"{s.name}  tables={tables}  {state}  checkpoint={s.checkpoint}  head={s.head}  "
              f"lag={s.lag_events} events / {s.lag_seconds:.1f} s{extra}")
    return 0


class Progress:
    """A progress bar on a terminal (redrawn in place), plain lines every few seconds elsewhere."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self.name = name
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, position: int, head: int, applied: int) -> None:
        now = time.monotonic()
        done = position >= head
        if not self.tty and not done and now - self._last < PLAIN_EVERY_S:
            return
        self._last = now
        share = position / head if head else 1.0
        rate = applied / max(now - self.started, 1e-9)
        text = f"{share:6.1%}  position {position:,}/{head:,}  {applied:,} events applied  {rate:,.0f} ev/s"
        if self.tty:
            filled = int(share * BAR_WIDTH)
            self.stream.write(f"\r{self.name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}")
            if done:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.name}: {text}\n")
        self.stream.flush()


def _rebuild(args: argparse.Namespace) -> int:
    service = load_foundation(args.app).subscriptions
    result = service.rebuild(args.name, restart=args.restart, chunk=args.chunk,
                             progress=Progress(args.name, sys.stderr))
    resumed = f" (resumed at {result['resumed_from']})" if result["resumed_from"] else ""
    print(f"{args.name}: rebuilt{resumed}: {result['applied']} events applied, swapped in at position "
          f"{result['position']}")
    return 0
