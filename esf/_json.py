"""Strict JSON checks shared by every service that puts values on the wire."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import PayloadTooLarge, SerializationError

#: Deepest nesting accepted in a JSON value.
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")
_BAD_NAME = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def check_json(value: Any, where: str = "value") -> None:
    """Raise :class:`SerializationError` naming the first part of ``value`` that is not plain JSON.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists and
    tuples of those, and dicts with ``str`` keys. Rejected: NaN and infinities,
    bytes, sets, dates, objects, non-string keys, nesting deeper than 64, and
    strings (or keys) with a lone surrogate (``"\\ud800"``: no UTF-8 encoding exists).
    """
    if _flat(value):
        return
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SerializationError(f"{path}: nested deeper than {MAX_DEPTH} levels", path=path)
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if item is None or isinstance(item, bool | int):
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
                _check_text(k, f"{path} key")
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


def _check_text(value: str, path: str) -> None:
    """Refuse a string that has no UTF-8 encoding (a lone surrogate, e.g. from ``surrogateescape``)."""
    if not value.isascii() and _SURROGATE.search(value):
        raise SerializationError(f"{path}: the string holds a lone surrogate and cannot be encoded as UTF-8; "
                                 "decode bytes with errors='replace' or pass base64 text", path=path)


def check_name(value: object, what: str, *, max_chars: int = 200) -> str:
    """Return ``value`` when it is a usable name: a non-empty string of at most ``max_chars`` characters
    without control characters or lone surrogates.

    Raises:
        ValidationError: anything else (the message names ``what``).
    """
    from .errors import ValidationError

    if not isinstance(value, str) or not value or len(value) > max_chars or _BAD_NAME.search(value):
        shown = ascii(value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "...")
        raise ValidationError(f"{what}: must be a non-empty string of at most {max_chars} characters without "
                              f"control characters, got {shown}", errors={what: "invalid"})
    return value


def _flat(value: Any) -> bool:
    """True for the common case checked without a walk: a list, tuple or str-keyed dict of scalars."""
    kind = type(value)
    if kind is dict:
        for key in value:
            if type(key) is not str or not key.isascii():
                return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:
        t = type(item)
        if t is str:
            if item.isascii():
                continue
            return False
        if t is int or t is bool or item is None:
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
