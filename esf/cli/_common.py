"""Helpers shared by the CLI modules."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..foundation import Foundation


class CommandError(Exception):
    """A CLI usage problem: printed without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_foundation(app: str | None = None) -> Foundation:
    """The Foundation named by ``app`` (``pkg.module[:attribute]``), ``$ESF_APP``, or one from settings."""
    from ..foundation import Foundation

    spec = app or os.environ.get("ESF_APP")
    if not spec:
        return Foundation.from_env()
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import application module {module_name!r}: {exc}") from None
    if attr:
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    else:
        candidates = [v for v in vars(module).values() if isinstance(v, Foundation)]
        if len(candidates) != 1:
            raise CommandError(
                f"module {module_name!r} holds {len(candidates)} Foundation objects; name one as {module_name}:NAME"
            )
        obj = candidates[0]
    if callable(obj) and not isinstance(obj, Foundation):
        obj = obj()
    if not isinstance(obj, Foundation):
        raise CommandError(f"{spec!r} is not a Foundation")
    return obj


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``90d`` → timedelta. Raises ValidationError."""
    m = _DURATION.match(text)
    if not m:
        raise ValidationError(f"{text!r} is not a duration (examples: 30s, 15m, 2h, 90d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what}: not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise too_deep(what) from None


def too_deep(what: str) -> ValidationError:
    """The error of a JSON argument nested deeper than the parser can go."""
    return ValidationError(f"{what}: JSON nested too deeply", errors={what: "too deep"})
