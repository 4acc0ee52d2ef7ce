"""Limits, value checks and the JSON model of the event query language.

Everything here is pure: :func:`parse_path` and the ``check_*`` functions
validate what a caller passes (raising :class:`esf.errors.QueryError`), and
:func:`resolve`, :func:`json_kind` and :func:`json_equal` define how a stored
value is found and compared, which every backend must reproduce.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeAlias

from ..errors import QueryError

Scalar: TypeAlias = str | int | float | bool | None
PathSegment: TypeAlias = str | int
Path: TypeAlias = tuple[PathSegment, ...]
Order: TypeAlias = Literal["asc", "desc"]
Per: TypeAlias = Literal["minute", "hour", "day"]
CompareOp: TypeAlias = Literal["eq", "lt", "le", "gt", "ge"]

#: A key segment of a data path.
KEY_SEGMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: An array-index segment of a data path (non-negative, no leading zero).
INDEX_SEGMENT_RE = re.compile(r"^(?:0|[1-9][0-9]{0,8})$")
#: Maximum number of segments in a data path.
MAX_PATH_DEPTH = 16
#: Maximum length of a string value, in characters.
MAX_STRING_CHARS = 10_000
#: Maximum number of values in ``in_``.
MAX_IN_VALUES = 1_000
#: Maximum number of nodes in one filter tree.
MAX_FILTER_NODES = 1_000
#: Maximum nesting depth of a filter tree.
MAX_FILTER_DEPTH = 64
#: Maximum page size / limit.
MAX_LIMIT = 100_000
#: Maximum length of an event type, stream id or correlation id (column sizes).
MAX_ID_CHARS = 200
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Column fields accepted by ``count(by=...)``; anything else must be ``data.<path>``.
GROUP_COLUMNS = ("event_type", "stream_id", "correlation_id")
#: Columns that sequences can correlate on.
SEQUENCE_KEYS = ("correlation_id", "stream_id")
PERIODS: tuple[Per, ...] = ("minute", "hour", "day")
AGGREGATES = ("min", "max", "avg", "sum")


def fail(message: str, where: str = "query") -> NoReturn:
    raise QueryError(message, errors={where: message})


# ---------------------------------------------------------------- validation


def parse_path(path: object) -> Path:
    """Split and validate a data path (``"user.id"``, ``"items.0.sku"``).

    Raises:
        QueryError: not a string, empty, too deep, or a segment is invalid.
    Returns:
        The segments: ``str`` keys and ``int`` array indexes.
    """
    if not isinstance(path, str):
        fail(f"a data path must be a string like 'user.id', not {type(path).__name__}", "path")
    segments = path.split(".")
    if len(segments) > MAX_PATH_DEPTH:
        fail(f"a data path has at most {MAX_PATH_DEPTH} segments; got {len(segments)}", "path")
    out: list[PathSegment] = []
    for seg in segments:
        if INDEX_SEGMENT_RE.fullmatch(seg):
            out.append(int(seg))
        elif KEY_SEGMENT_RE.fullmatch(seg):
            out.append(seg)
        else:
            fail(
                f"invalid data path segment {seg[:80]!r}: use letters, digits and '_' (not first), "
                "at most 64 characters, or an array index such as 0",
                "path",
            )
    return tuple(out)


def check_text(value: object, what: str, *, max_chars: int = MAX_STRING_CHARS, empty: bool = True) -> str:
    if not isinstance(value, str):
        fail(f"{what} must be a string, not {type(value).__name__}", what)
    text = str.__str__(value)
    if not empty and not text:
        fail(f"{what} must not be empty", what)
    if len(text) > max_chars:
        fail(f"{what} is longer than {max_chars} characters", what)
    if "\x00" in text:
        fail(f"{what} must not contain the NUL character", what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{what} is not valid Unicode text (lone surrogate)", what)
    return text


def check_scalar(value: object, what: str = "value") -> Scalar:
    """Validate and normalise one JSON scalar (``bool``/``int``/``float`` subclasses become plain).

    Raises:
        QueryError: not a JSON scalar, a non-finite float, an int outside 64 bits or a bad string.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            fail(f"{what} {number} is outside the 64-bit integer range", what)
        return number
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(f"{what} must be a finite number (no NaN or infinity)", what)
        return float(value)
    if isinstance(value, str):
        return check_text(value, what)
    fail(f"{what} must be a JSON scalar (str, int, float, bool or None), not {type(value).__name__}", what)


def check_datetime(value: object, what: str) -> datetime:
    """A timezone-aware datetime converted to UTC. Raises QueryError otherwise."""
    if not isinstance(value, datetime):
        fail(f"{what} must be a datetime, not {type(value).__name__}", what)
    if value.tzinfo is None or value.utcoffset() is None:
        fail(f"{what} must be timezone-aware (for example datetime.now(UTC))", what)
    return value.astimezone(UTC)


def check_position(value: object, what: str = "position") -> int:
    """A non-negative 64-bit position. Raises QueryError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"{what} must be an int, not {type(value).__name__}", what)
    if not 0 <= value <= _INT64_MAX:
        fail(f"{what} must be between 0 and 2**63-1", what)
    return int(value)


def check_limit(value: object, what: str = "limit") -> int:
    """A limit between 1 and ``MAX_LIMIT``. Raises QueryError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        fail(f"{what} must be an int between 1 and {MAX_LIMIT}", what)
    return int(value)


def check_per(value: object) -> Per | None:
    """``None`` or one of ``minute``, ``hour``, ``day``. Raises QueryError otherwise."""
    if value is None:
        return None
    for per in PERIODS:
        if value == per and isinstance(value, str):
            return per
    fail(f"per must be one of {', '.join(PERIODS)}, not {value!r}", "per")


def parse_field(value: object, what: str = "by", columns: Sequence[str] = GROUP_COLUMNS) -> str | Path:
    """A column name from ``columns`` or ``data.<path>`` (returned as a path tuple).

    Raises:
        QueryError: anything else.
    """
    if isinstance(value, str):
        if value in columns:
            return value
        if value.startswith("data."):
            return parse_path(value[5:])
    fail(f"{what} must be one of {', '.join(columns)} or 'data.<path>', not {str(value)[:80]!r}", what)


# ---------------------------------------------------------------- the model


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`resolve` returns for a path that does not resolve.
MISSING: Any = _Missing()


def resolve(data: Any, path: Path) -> Any:
    """The value at ``path`` in ``data``, or ``MISSING``."""
    current = data
    for seg in path:
        if isinstance(seg, int):
            if isinstance(current, list | tuple) and seg < len(current):
                current = current[seg]
            else:
                return MISSING
        elif isinstance(current, Mapping) and seg in current:
            current = current[seg]
        else:
            return MISSING
    return current


def json_kind(value: Any) -> str:
    """``null``, ``boolean``, ``number``, ``string``, ``array``, ``object`` (or ``missing``)."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array"


def json_equal(a: Any, b: Scalar) -> bool:
    """Typed equality of a stored value and a scalar (``true`` is not ``1``)."""
    kind = json_kind(a)
    return kind == json_kind(b) and kind in ("null", "boolean", "number", "string") and a == b
