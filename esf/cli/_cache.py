"""``esf cache …``: counters, one entry, invalidation.

Each handler gets the service from ``load_foundation(args.app)`` and passes it to a ``run_*``
function, which tests call with a Foundation they built.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._common import CommandError, load_foundation, print_json

if TYPE_CHECKING:
    from ..foundation import Foundation

__all__ = ["register", "run_get", "run_invalidate", "run_stats"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cache", help="cache counters, entries and invalidation")
    sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")

    p = sub.add_parser("stats", help="namespaces with their versions, and hits/misses/loads over every process")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_handler(run_stats))

    p = sub.add_parser("get", help="print the cached value of KEY (JSON); exit 1 when absent")
    p.add_argument("key")
    p.add_argument("--namespace", default="default")
    p.set_defaults(handler=_handler(run_get))

    p = sub.add_parser("invalidate", help="drop a whole NAMESPACE (a version bump), or one KEY of it, everywhere")
    p.add_argument("namespace")
    p.add_argument("key", nargs="?", default=None)
    p.set_defaults(handler=_handler(run_invalidate))

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)


def _handler(fn: Callable[[Foundation, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        fnd = load_foundation(args.app)
        try:
            return fn(fnd, args)
        finally:
            fnd.close()

    return handle


def stats(fnd: Foundation) -> dict[str, Any]:
    """The shared tier's namespaces and versions, and the ``esf.cache.*`` metrics summed over every process."""
    cache = fnd.cache
    tier = cache.core.tier
    out: dict[str, Any] = {"backend": cache.core.backend, "health": cache.health().to_dict()}
    out["namespaces"] = tier.namespaces() if tier is not None else {}
    metrics: dict[str, Any] = {}
    if fnd.settings.telemetry.enabled:
        snapshot = fnd.telemetry.snapshot("esf.cache")
        for name, metric in snapshot.get("metrics", {}).items():
            for series in metric.get("series", []):
                labels = ",".join(f"{k}={v}" for k, v in sorted(series.get("labels", {}).items()))
                value = series.get("value", series.get("count"))
                metrics[f"{name}{{{labels}}}" if labels else name] = value
    out["metrics"] = metrics
    return out


def run_stats(fnd: Foundation, args: argparse.Namespace) -> int:
    report = stats(fnd)
    if args.json:
        print_json(report)
        return 0
    print(f"backend: {report['backend']} ({report['health']['status']})")
    print("namespaces:")
    for name, version in sorted(report["namespaces"].items()):
        print(f"  {name}  version {version}")
    print("metrics:")
    for name, value in sorted(report["metrics"].items()):
        print(f"  {name}  {value:g}" if isinstance(value, int | float) else f"  {name}  {value}")
    return 0


def _require_shared_tier(fnd: Foundation) -> None:
    if fnd.cache.core.tier is None:
        raise CommandError("the cache has no shared tier (no Redis configured): each process keeps its own "
                           "entries, out of reach of this command", exit_code=1)


def run_get(fnd: Foundation, args: argparse.Namespace) -> int:
    _require_shared_tier(fnd)
    value = fnd.cache.namespace(args.namespace).get(args.key, _ABSENT)
    if value is _ABSENT:
        raise CommandError(f"{args.namespace}/{args.key}: not cached", exit_code=1)
    print(json.dumps(value, indent=2, sort_keys=True))
    return 0


def run_invalidate(fnd: Foundation, args: argparse.Namespace) -> int:
    _require_shared_tier(fnd)
    ns = fnd.cache.namespace(args.namespace)
    if args.key is None:
        version = ns.bump()
        if version is None:
            raise CommandError(f"{args.namespace}: the shared tier is unreachable; nothing invalidated", exit_code=1)
        print(f"{args.namespace}: every key invalidated (version {version})")
        return 0
    if not ns.delete(args.key):
        raise CommandError(f"{args.namespace}/{args.key}: the shared tier is unreachable; nothing invalidated",
                           exit_code=1)
    print(f"{args.namespace}/{args.key}: invalidated")
    return 0


_ABSENT: Any = object()
