"""Strict JSON checks shared by every service that puts values on the wire."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import PayloadTooLarge, SerializationError

#: Deepest nesting accepted in a JSON value.
MAX_DEPTH = 64


def check_json(value: Any, where: str = "value") -> None:
    """Raise :class:`SerializationError` naming the first part of ``value`` that is not plain JSON.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists and
    tuples of those, and dicts with ``str`` keys. Rejected: NaN and infinities,
    bytes, sets, dates, objects, non-string keys, nesting deeper than 64.
    """
    if _flat(value):
        return
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SerializationError(f"{path}: nested deeper than {MAX_DEPTH} levels", path=path)
        if item is None or isinstance(item, bool | int | str):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise SerializationError(f"{path}: {item!r} is not valid JSON (NaN and infinities are refused)",
                                         path=path)
            continue
        if isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise SerializationError(
                        f"{path}: key {k!r} is a {type(k).__name__}; JSON object keys must be strings", path=path
                    )
                stack.append((v, f"{path}.{k}", depth + 1))
            continue
        hint = " (encode bytes as base64 text)" if isinstance(item, bytes | bytearray) else ""
        if hasattr(item, "isoformat"):
            hint = " (pass item.isoformat())"
        raise SerializationError(
            f"{path}: a value of type {type(item).__name__} is not JSON{hint}; only JSON values can be sent",
            path=path,
        )


_isfinite = math.isfinite


def _flat(value: Any) -> bool:
    """True for the common case checked without a walk: a list, tuple or str-keyed dict of scalars."""
    kind = type(value)
    if kind is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:
        t = type(item)
        if t is str or t is int or t is bool or item is None:
            continue
        if t is float and _isfinite(item):
            continue
        return False
    return True


def dumps(value: Any) -> str:
    """Compact, canonical JSON (sorted keys)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False)


def check_size(encoded: str | bytes, limit: int, where: str) -> None:
    """Raise :class:`PayloadTooLarge` when ``encoded`` exceeds ``limit`` bytes."""
    size = len(encoded.encode() if isinstance(encoded, str) else encoded)
    if size > limit:
        raise PayloadTooLarge(f"{where}: {size} bytes encoded, above the limit of {limit} bytes", size=size,
                              limit=limit)
