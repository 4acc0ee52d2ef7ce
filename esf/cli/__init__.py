"""The ``esf`` command line.

Each service registers its own sub-commands from a module of this package
(``_jobs``, ``_dlq``, ``_events`` …) through ``register(subparsers)``.
Commands that need a Foundation build it with :func:`load_foundation`, from
``--app pkg.module[:attribute]`` or from the environment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ..errors import EsfError
from ._common import CommandError, load_foundation

__all__ = ["CommandError", "load_foundation", "main"]

#: Modules of this package that add sub-commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "_run",
    "_jobs",
    "_dlq",
    "_beat",
    "_events",
    "_config",
    "_metrics",
    "_flags",
    "_secrets",
    "_cache",
    "_services",
    "_subscriptions",
    "_projections",
    "_sagas",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esf", description="ESF: jobs, events, configuration and telemetry.")
    parser.add_argument(
        "--app",
        default=None,
        help="the application: pkg.module[:attribute] holding a Foundation (default: $ESF_APP, or settings only)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = module.register
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except CommandError as exc:
        print(f"esf: {exc}", file=sys.stderr)
        return exc.exit_code
    except EsfError as exc:
        print(f"esf: error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
