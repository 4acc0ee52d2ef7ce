"""``secret://path#key`` references in configuration values, resolved on read."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from ..errors import ValidationError
from ._value import Secret

__all__ = ["SCHEME", "SecretRef", "has_reference", "parse_reference", "resolve_references"]

#: Prefix of a reference to a secret in a configuration value.
SCHEME = "secret://"


@dataclass(frozen=True)
class SecretRef:
    """A parsed ``secret://path[?version=N][#key]``."""

    path: str
    key: str | None = None
    version: int | None = None


def parse_reference(text: str) -> SecretRef:
    """Parse ``secret://path[?version=N][#key]``.

    Raises:
        ValidationError: ``text`` is not a well-formed reference.
    """
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise ValidationError(f"not a secret reference (expected {SCHEME}path#key): {text!r}")
    rest = text[len(SCHEME):]
    rest, _, key = rest.partition("#")
    path, _, query = rest.partition("?")
    version: int | None = None
    if query:
        params = parse_qs(query, strict_parsing=False)
        unknown = sorted(set(params) - {"version"})
        raw = params.get("version", [""])[-1]
        if unknown or not raw.isdigit() or int(raw) < 1:
            raise ValidationError(f"secret reference {text!r}: the only query is ?version=N (N >= 1)",
                                  errors={text: "bad query"})
        version = int(raw)
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise ValidationError(f"secret reference {text!r}: the path is empty or not relative",
                              errors={text: "bad path"})
    return SecretRef(path=path, key=key or None, version=version)


def has_reference(value: Any) -> bool:
    """Whether ``value`` is, or contains, a ``secret://`` string."""
    if isinstance(value, str):
        return value.startswith(SCHEME)
    if isinstance(value, Mapping):
        return any(has_reference(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_reference(v) for v in value)
    return False


def resolve_references(value: Any, lookup: Callable[[SecretRef], Secret]) -> Any:
    """``value`` with every ``secret://`` string replaced by the :class:`Secret` ``lookup`` returns.

    Mappings come back read-only and lists as tuples, as configuration values are.
    """
    if isinstance(value, str):
        return lookup(parse_reference(value)) if value.startswith(SCHEME) else value
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: resolve_references(v, lookup) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(resolve_references(v, lookup) for v in value)
    return value
