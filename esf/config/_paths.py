"""Configuration paths and JSON trees: parsing, freezing, reading, writing and diffing.

Path syntax
-----------
A path is one or more *segments* joined by dots: ``billing.retries``,
``esf.config.history_limit``. A segment starts with a letter or ``_`` and
continues with letters, digits, ``_`` or ``-``, at most 64 characters. A path
has at most 32 segments and 256 characters. There is no escaping and no list
indexing: a list is one value, replaced whole. Keys of mappings given as
values follow the same rule, so every leaf of the tree has a valid path.
"""

from __future__ import annotations

import json
import math
import re
import types
from collections.abc import Iterator, Mapping
from typing import Any

from ..secrets import Secret

__all__ = [
    "DELETE",
    "MAX_PATH_CHARS",
    "MAX_SEGMENTS",
    "SEGMENT_RE",
    "deep_merge",
    "freeze",
    "is_under",
    "iter_leaves",
    "leaf_diff",
    "lookup",
    "overlaps",
    "parse_path",
    "path_error",
    "set_path",
    "thaw",
    "thaw_plain",
]

#: One segment of a path.
SEGMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
#: Most segments in one path.
MAX_SEGMENTS = 32
#: Longest path, in characters.
MAX_PATH_CHARS = 256


class _Delete:
    """Marker value: ``update_batch({"a.b": DELETE})`` removes ``a.b``."""

    _instance: _Delete | None = None

    def __new__(cls) -> _Delete:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DELETE"


#: Give this as a value to remove a path from the document.
DELETE: Any = _Delete()


def path_error(path: object) -> str | None:
    """Why ``path`` is not a valid path, or ``None`` when it is."""
    if not isinstance(path, str):
        return f"a path is a string, not {type(path).__name__}"
    if not path:
        return "the path is empty"
    if len(path) > MAX_PATH_CHARS:
        return f"the path has {len(path)} characters; at most {MAX_PATH_CHARS} are allowed"
    parts = path.split(".")
    if len(parts) > MAX_SEGMENTS:
        return f"the path has {len(parts)} segments; at most {MAX_SEGMENTS} are allowed"
    for part in parts:
        if not SEGMENT_RE.match(part):
            return (
                f"segment {part!r} is not valid (a letter or '_', then letters, digits, '_' or '-'; "
                "at most 64 characters)"
            )
    return None


def parse_path(path: str) -> tuple[str, ...]:
    """Split a valid path into its segments.

    Raises:
        ValueError: the path is not valid (the message says why).
    """
    problem = path_error(path)
    if problem is not None:
        raise ValueError(problem)
    return tuple(path.split("."))


def is_under(path: str, prefix: str) -> bool:
    """``path`` equals ``prefix`` or lies inside it (``""`` contains everything)."""
    return not prefix or path == prefix or path.startswith(prefix + ".")


def overlaps(a: str, b: str) -> bool:
    """One path contains the other."""
    return is_under(a, b) or is_under(b, a)


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists become tuples."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any, path: str, errors: dict[str, str], secrets: set[str] | None = None) -> Any:
    """A plain JSON-compatible copy of ``value`` (dicts, lists, str, int, float, bool, None).

    Read-only mappings and tuples (as returned by ``get``) are accepted. A
    :class:`~esf.Secret` becomes its clear string and its path is added to
    ``secrets``. Problems are recorded in ``errors`` keyed by path; the return
    value is then meaningless.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            errors[path] = f"{value!r} is not a JSON number (NaN and infinities are not allowed)"
        return value
    if isinstance(value, Secret):
        if secrets is None:
            errors[path] = "a Secret is only allowed as a whole value"
            return None
        secrets.add(path)
        return value.reveal()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not SEGMENT_RE.match(key):
                errors[f"{path}.{key}"] = f"key {key!r} is not a valid path segment"
                continue
            out[key] = thaw(item, f"{path}.{key}", errors, secrets)
        return out
    if isinstance(value, list | tuple):
        # Paths never index into lists: a secret inside a list could not be redacted.
        return [thaw(item, path, errors, None) for item in value]
    errors[path] = f"a value of type {type(value).__name__} cannot be stored as JSON"
    return None


def lookup(tree: Mapping[str, Any], parts: tuple[str, ...]) -> Any:
    """The value at ``parts`` in ``tree``.

    Raises:
        KeyError: nothing is stored there.
    """
    node: Any = tree
    for part in parts:
        if not isinstance(node, Mapping):
            raise KeyError(part)
        node = node[part]
    return node


def set_path(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    """Set (or with ``DELETE`` remove) ``parts`` in the plain dict ``tree``, in place.

    Missing or non-mapping intermediate nodes are replaced by mappings.
    Removing a path that does not exist does nothing.
    """
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is DELETE:
                return
            child = {}
            node[part] = child
        node = child
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else in ``top`` wins."""
    out: dict[str, Any] = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = deep_merge(below, value)
        else:
            out[key] = value
    return out


def iter_leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, value)`` for every non-mapping value (empty mappings count as leaves)."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and value:
            yield from iter_leaves(value, path)
        else:
            yield path, value


_ABSENT: Any = object()


def leaf_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(path, old, new)`` for every leaf that differs, sorted by path; absent is ``DELETE``.

    A subtree that appeared is reported leaf by leaf; one that vanished, or a
    mapping replaced by a scalar (or the reverse), is one change at its root.
    """
    out: list[tuple[str, Any, Any]] = []
    _diff(old, new, "", out)
    out.sort(key=lambda item: item[0])
    return out


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], path: str, out: list[tuple[str, Any, Any]]) -> None:
    for key in old.keys() | new.keys():
        sub = f"{path}.{key}" if path else key
        a = old.get(key, _ABSENT)
        b = new.get(key, _ABSENT)
        if a is _ABSENT:
            _add(DELETE, b, sub, out)
        elif b is _ABSENT:
            _add(a, DELETE, sub, out)
        elif isinstance(a, Mapping) and isinstance(b, Mapping) and a and b:
            _diff(a, b, sub, out)
        elif not _same(a, b):
            _add(a, b, sub, out)


def _add(old: Any, new: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """A subtree appeared (each of its leaves is reported), vanished or changed kind (reported at its root)."""
    if isinstance(new, Mapping) and new and old is DELETE:
        for sub, value in iter_leaves(new, path):
            out.append((sub, DELETE, value))
    else:
        out.append((path, old, new))


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python, but they are different JSON values.
    if isinstance(a, Mapping | list | tuple) or isinstance(b, Mapping | list | tuple):
        return _canon(a) == _canon(b)
    return type(a) is type(b) and a == b


def _canon(value: Any) -> str:
    # Tag the kind of every scalar so that 1, 1.0 and true stay different.
    return json.dumps(_tagged(value), sort_keys=True)


def _tagged(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {"m": {k: _tagged(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"l": [_tagged(v) for v in value]}
    return {type(value).__name__: value}


def thaw_plain(value: Any) -> Any:
    """Read-only mappings/tuples back to dicts/lists, with no checks (for values already validated)."""
    if isinstance(value, Mapping):
        return {k: thaw_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw_plain(v) for v in value]
    return value
