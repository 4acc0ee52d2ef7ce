"""``esf secrets …``: read a secret (redacted unless asked), show leases and rotations, refresh now.

Each handler gets the Foundation from ``load_foundation(args.app)`` and passes it to a ``run_*``
function, which tests call with a Foundation they built.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..secrets._value import REDACTED
from ._common import load_foundation, print_json

if TYPE_CHECKING:
    from ..foundation import Foundation

__all__ = ["STATUS_EVENTS", "register", "run_get", "run_refresh", "run_status"]

#: Recent events of the ``secrets`` stream that ``esf secrets status`` reads.
STATUS_EVENTS = 1000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("secrets", help="read secrets, show leases and rotations, refresh")
    sub = parser.add_subparsers(dest="secrets_command", metavar="SUBCOMMAND")

    p = sub.add_parser("get", help="print the keys of the secret at PATH (values redacted unless --reveal)")
    p.add_argument("path")
    p.add_argument("key", nargs="?", default=None, help="print only this key")
    p.add_argument("--version", type=int, default=None, help="a pinned KV version")
    p.add_argument("--reveal", action="store_true", help="print the values in clear")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_get))

    p = sub.add_parser("status", help="backend and token, leases and their expiry, last rotation per path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler(run_status))

    p = sub.add_parser("refresh", help="enqueue esf.secrets.refresh (or run it here with --local)")
    p.add_argument("paths", nargs="*", help="paths to read again (besides those the worker watches)")
    p.add_argument("--local", action="store_true", help="run the refresh in this process")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for the job's report")
    p.set_defaults(handler=_handler(run_refresh))


def _handler(run: Callable[[Foundation, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return run(load_foundation(args.app), args)

    return handler


def run_get(fnd: Foundation, args: argparse.Namespace) -> int:
    data = fnd.secrets.read(args.path, args.version)
    keys = [args.key] if args.key is not None else sorted(data.data)
    values = {k: (fnd.secrets.get(args.path, k, args.version).reveal() if args.reveal else REDACTED) for k in keys}
    if args.json:
        print_json({"path": data.path, "version": data.version, "data": values})
    elif args.key is not None:
        print(values[args.key])
    else:
        for k, v in values.items():
            print(f"{k} = {v}")
    return 0


def run_status(fnd: Foundation, args: argparse.Namespace) -> int:
    from ..events import Q, Query

    report: dict[str, Any] = {"backend": fnd.secrets.provider.status(), "health": fnd.secrets.health()}
    recent = fnd.events.query(Query(Q.stream("secrets"), order="desc", limit=STATUS_EVENTS))
    leases: dict[str, dict[str, Any]] = {}
    rotations: dict[str, str] = {}
    for e in reversed(recent):
        data = dict(e.data)
        path = str(data.get("path", ""))
        if e.event_type == "secrets.rotated":
            rotations[path] = e.recorded_at.isoformat()
        if e.event_type in ("secrets.lease_issued", "secrets.lease_reissued", "secrets.lease_renewed"):
            expires = e.recorded_at.timestamp() + float(data.get("ttl_s") or 0)
            leases[path] = {"lease_id": data.get("lease_id"), "expires_at": expires, "by": f"{e.node}:{e.pid}",
                            "last": e.event_type.removeprefix("secrets.")}
    report["leases"] = leases
    report["last_rotation"] = rotations
    if args.json:
        print_json(report)
        return 0
    backend = report["backend"]
    print(f"backend: {backend.get('backend')} {backend.get('url', '')} health={report['health']['status']}"
          + (f" ({report['health']['reason']})" if "reason" in report["health"] else "")
          + (f" token_ttl={backend['ttl_s']:g}s" if "ttl_s" in backend else ""))
    import time

    now = time.time()
    for path, lease in sorted(leases.items()):
        print(f"lease {path}: {lease['lease_id']} expires in {lease['expires_at'] - now:.0f}s "
              f"({lease['last']} by {lease['by']})")
    for path, at in sorted(rotations.items()):
        print(f"rotated {path}: {at}")
    return 0


def run_refresh(fnd: Foundation, args: argparse.Namespace) -> int:
    if args.local:
        print(json.dumps(fnd.secrets.refresh(tuple(args.paths)), indent=2, sort_keys=True))
        return 0
    handle = fnd.jobs.get("esf.secrets.refresh").enqueue(list(args.paths))
    if args.wait is None:
        print(handle.id)
        return 0
    print(json.dumps(handle.wait(args.wait), indent=2, sort_keys=True))
    return 0
