"""Call-site validation of events, before anything is sent or written.

Rules (every backend applies the same ones, so an event accepted on SQLite is
accepted on PostgreSQL):

- ``type`` matches :data:`EVENT_TYPE_RE` (dotted identifiers such as
  ``order.created`` or ``job.dead_lettered``), at most
  :data:`MAX_EVENT_TYPE_CHARS` characters.
- ``stream_id`` matches :data:`STREAM_ID_RE` (letters, digits and
  ``_ . : @ / + = - $``, not starting with a punctuation mark other than
  ``_``/``$``), at most :data:`MAX_STREAM_ID_CHARS` characters; absent means
  :data:`DEFAULT_STREAM_ID`.
- ``event_id`` is a UUID in any form ``uuid.UUID`` accepts; it is stored in
  its canonical lower-case hyphenated form. Generated (UUID4) when absent.
- ``correlation_id`` / ``parent_id``: strings of at most
  :data:`MAX_REF_CHARS` characters without control characters. They are
  stored verbatim (they are always bound parameters, never SQL text).
- ``data`` and ``metadata`` are JSON objects: ``str`` keys; values ``None``,
  ``bool``, ``int``, finite ``float``, ``str``, lists/tuples and mappings of
  those (nesting deeper than the interpreter's recursion limit is refused).
  NaN and ±Infinity,
  ``bytes``, sets, dates and other objects raise
  :class:`~esf.errors.SerializationError`. The NUL character is refused in
  strings and keys (PostgreSQL cannot store it in JSONB).
- The canonical JSON encoding of the whole event (type, stream, ids, data,
  metadata) is at most ``max_event_bytes`` bytes
  (``settings.events.max_event_bytes``, default 1 MiB), else
  :class:`~esf.errors.PayloadTooLarge`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import json.scanner
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .._ids import new_ids
from ..errors import DuplicateEventId, PayloadTooLarge, SerializationError, ValidationError
from ._model import Event, FrozenDict, FrozenList

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_STREAM_ID",
    "EVENT_TYPE_RE",
    "MAX_EVENT_TYPE_CHARS",
    "MAX_REF_CHARS",
    "MAX_STREAM_ID_CHARS",
    "STREAM_ID_RE",
    "PreparedEvent",
    "canonical_json",
    "check_json_object",
    "prepare_events",
]

#: Dotted identifiers: ``order.created``, ``job.dead_lettered``, ``Billing.v2.charged``.
EVENT_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
#: Longest event type, in characters.
MAX_EVENT_TYPE_CHARS = 200
#: Stream ids: ``order-42``, ``job-<uuid>``, ``tenant:7/cart``, ``$global``.
STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_.:@/+=$\-]*$")
#: Longest stream id, in characters.
MAX_STREAM_ID_CHARS = 200
#: Stream of events appended without a ``stream_id``.
DEFAULT_STREAM_ID = "$global"
#: Longest correlation id / parent id, in characters.
MAX_REF_CHARS = 200
#: Default largest event (canonical JSON, UTF-8), in bytes.
DEFAULT_MAX_EVENT_BYTES = 1_048_576

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PreparedEvent:
    """An event that passed validation, with everything the store writes except position and version.

    ``data``/``metadata`` are private JSON-safe copies (``dict`` or
    :class:`~esf.events.FrozenDict`; safe to hand to a driver).
    ``content_hash`` is the SHA-256 of the canonical JSON of the content
    (type, stream, correlation, parent, data, metadata): the same id with the
    same hash is a retry; with another hash it is a clash.
    """

    event_id: str
    stream_id: str
    event_type: str
    correlation_id: str | None
    parent_id: str | None
    data: dict[str, Any]
    metadata: dict[str, Any]
    content_hash: str
    recorded_at: datetime
    monotonic_ns: int
    pid: int
    #: Canonical JSON text of ``data`` / ``metadata`` (what PostgreSQL receives).
    data_json: str = ""
    metadata_json: str = ""
    #: The id was generated here (the event came without one), so no stored event can have it:
    #: a store need not look it up. Never set on events read back from a spool.
    new_id: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (for the local spool)."""
        return {
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "event_type": self.event_type,
            "correlation_id": self.correlation_id,
            "parent_id": self.parent_id,
            "data": self.data,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
            "recorded_at": self.recorded_at.isoformat(),
            "monotonic_ns": self.monotonic_ns,
            "pid": self.pid,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PreparedEvent:
        """Inverse of :meth:`to_json`."""
        return cls(
            event_id=raw["event_id"],
            stream_id=raw["stream_id"],
            event_type=raw["event_type"],
            correlation_id=raw["correlation_id"],
            parent_id=raw["parent_id"],
            data=dict(raw["data"]),
            metadata=dict(raw["metadata"]),
            content_hash=raw["content_hash"],
            recorded_at=datetime.fromisoformat(raw["recorded_at"]),
            monotonic_ns=int(raw["monotonic_ns"]),
            pid=int(raw["pid"]),
            data_json=canonical_json(raw["data"]),
            metadata_json=canonical_json(raw["metadata"]),
        )


#: One shared encoder: ``json.dumps`` with non-default options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder and scanner themselves: ``JSONEncoder.encode`` builds a new C
# encoder on every call and ``JSONDecoder.decode`` wraps the scanner in Python,
# which together cost more than the encoding itself. No circular-reference
# markers: a cycle ends in RecursionError, which callers treat as "too deep".
_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_scanner: Any = getattr(json.scanner, "c_make_scanner", None)
_ENCODE_ONE: Any = (
    _c_encoder(None, _not_json, _encode_string, None, ":", ",", True, False, False) if _c_encoder else None
)


def _frozen_list(items: list[Any]) -> FrozenList:
    # Objects inside are already frozen by the decoder's object hook.
    return FrozenList([_frozen_list(x) if type(x) is list else x for x in items])


def _frozen_object(obj: dict[str, Any]) -> FrozenDict:
    lists = [key for key, item in obj.items() if type(item) is list]
    for key in lists:
        obj[key] = _frozen_list(obj[key])
    return FrozenDict(obj)


# Decoders that build the deep-frozen form directly (what StoredEvent keeps):
# FrozenDict itself as the hook when the text has no list, else a hook that
# also freezes the lists (the decoder has no hook for arrays).
_SCAN_FROZEN: Any = _c_scanner(json.JSONDecoder(object_hook=FrozenDict)) if _c_scanner else None
_SCAN_FROZEN_LISTS: Any = _c_scanner(json.JSONDecoder(object_hook=_frozen_object)) if _c_scanner else None
_decode_frozen_py = json.JSONDecoder(object_hook=FrozenDict).decode
_decode_frozen_lists_py = json.JSONDecoder(object_hook=_frozen_object).decode


def _decode_frozen(text: str) -> Any:
    if "[" in text:
        if _SCAN_FROZEN_LISTS is not None:
            return _SCAN_FROZEN_LISTS(text, 0)[0]
        return _decode_frozen_lists_py(text)
    return _SCAN_FROZEN(text, 0)[0] if _SCAN_FROZEN is not None else _decode_frozen_py(text)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN: the encoding hashed and measured."""
    if _ENCODE_ONE is not None:
        try:
            return "".join(_ENCODE_ONE(value, 0))
        except RecursionError:
            pass  # a cycle, or very deep nesting: let the standard encoder say which
    return _CANONICAL.encode(value)


def check_json_object(value: Any, what: str) -> dict[str, Any]:
    """Return a plain-``dict`` deep copy of ``value`` if it is a JSON object, else raise.

    Raises:
        SerializationError: ``value`` is not a mapping, or holds a non-JSON value
            (the message names the path, e.g. ``data.items[2]``).
    """
    if not isinstance(value, Mapping):
        raise SerializationError(
            f"{what}: must be a JSON object (a dict), got {type(value).__name__}", errors={what: "not an object"}
        )
    result = _copy_json(value, what)
    assert isinstance(result, dict)
    return result


def _copy_json(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise SerializationError(f"{path}: strings may not contain the NUL character", errors={path: "NUL"})
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(
                f"{path}: {value!r} is not valid JSON (NaN and Infinity are refused)", errors={path: "not finite"}
            )
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{path}: keys must be strings, got {type(key).__name__} {key!r}", errors={path: "non-string key"}
                )
            if "\x00" in key:
                raise SerializationError(f"{path}: keys may not contain the NUL character", errors={path: "NUL"})
            out[key] = _copy_json(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_copy_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    kind = type(value).__name__
    hint = " (decode bytes to str, e.g. base64)" if isinstance(value, bytes | bytearray | memoryview) else ""
    raise SerializationError(f"{path}: {kind} is not a JSON value{hint}", errors={path: f"not JSON: {kind}"})


def _check_ref(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what}: must be a non-empty string or None", errors={what: "not a string"})
    if len(value) > MAX_REF_CHARS or _CONTROL.search(value):
        raise ValidationError(
            f"{what}: at most {MAX_REF_CHARS} characters, no control characters", errors={what: "invalid"}
        )
    return value


@functools.lru_cache(maxsize=4096)
def _valid_type(value: str) -> bool:
    # Event types and stream ids repeat a lot: remember the verdicts.
    return len(value) <= MAX_EVENT_TYPE_CHARS and EVENT_TYPE_RE.match(value) is not None


@functools.lru_cache(maxsize=4096)
def _valid_stream(value: str) -> bool:
    return len(value) <= MAX_STREAM_ID_CHARS and STREAM_ID_RE.match(value) is not None


def check_event_type(value: Any) -> str:
    """Return ``value`` if it is a valid event type (see :data:`EVENT_TYPE_RE`), else raise ``ValidationError``."""
    if not isinstance(value, str) or not _valid_type(value):
        raise ValidationError(
            f"event type {value!r} is not valid: dotted identifiers such as 'order.created' "
            f"(letters, digits, '_', dots between parts; at most {MAX_EVENT_TYPE_CHARS} characters)",
            errors={"type": "invalid"},
        )
    return value


def check_stream_id(value: Any) -> str:
    """Return ``value`` if it is a valid stream id (see :data:`STREAM_ID_RE`), else raise ``ValidationError``."""
    if not isinstance(value, str) or not _valid_stream(value):
        raise ValidationError(
            f"stream id {value!r} is not valid: letters, digits and '_ . : @ / + = - $', "
            f"at most {MAX_STREAM_ID_CHARS} characters (example: 'order-42')",
            errors={"stream_id": "invalid"},
        )
    return value


#: The canonical form (``str(uuid.UUID(x))``): accepted as it is, without parsing.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_event_id(value: Any) -> str:
    """The canonical form of a UUID event id, else ``ValidationError``."""
    if type(value) is str and len(value) == 36 and _CANONICAL_UUID.fullmatch(value):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise ValidationError(
            f"event id {value!r} is not a UUID (leave it out to have one generated)", errors={"event_id": "not a UUID"}
        ) from None


def new_event_ids(n: int) -> list[str]:
    """``n`` time-ordered (version 7) UUIDs in canonical form, for events given without an id (see :mod:`esf._ids`)."""
    return new_ids(n)


def prepare_events(
    events: Event | Sequence[Event],
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    expected_version: int | None = None,
) -> list[PreparedEvent]:
    """Validate ``events`` and compute ids, hashes and timestamps.

    Parameters:
        events: one event or a non-empty sequence of events.
        max_event_bytes: largest canonical JSON encoding of one event.
        expected_version: when given, every event must be in the same stream.

    Returns:
        One :class:`PreparedEvent` per input event, in order. An event id that
        appears twice with the same content yields two equal entries.

    Raises:
        ValidationError: bad type, stream id, event id, refs, empty batch,
            several streams with ``expected_version``, negative ``expected_version``,
            or one id twice in the batch with different content.
        SerializationError: ``data``/``metadata`` not a JSON object.
        PayloadTooLarge: an event is larger than ``max_event_bytes``.
    """
    if not isinstance(events, Event) and (isinstance(events, str | bytes | Mapping)
                                          or not isinstance(events, Iterable)):
        raise ValidationError(f"append: give an Event or a sequence of Events, got {type(events).__name__}",
                              errors={"events": "not events"})
    batch = [events] if isinstance(events, Event) else list(events)
    if not batch:
        raise ValidationError("append: no events given")
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0
    ):
        raise ValidationError(
            f"expected_version: must be an integer >= 0 (0 = the stream must be empty), got {expected_version!r}",
            errors={"expected_version": "invalid"},
        )
    prepared = list(iter_prepared(batch, max_event_bytes))
    if expected_version is not None and len({p.stream_id for p in prepared}) > 1:
        raise ValidationError(
            "expected_version applies to one stream: every event of the batch must have the same stream_id",
            errors={"expected_version": "several streams"},
        )
    return prepared


def iter_prepared(batch: Sequence[Any], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[PreparedEvent]:
    """Validate and prepare ``batch`` one event at a time, in order (the checks of :func:`prepare_events`).

    For appends that send each event while the next one is validated; an
    error surfaces when the bad event is reached.
    """
    now = datetime.now(UTC)
    mono = time.monotonic_ns()
    pid = os.getpid()
    seen: dict[str, str] = {}
    fresh_ids = iter(new_event_ids(sum(1 for e in batch if isinstance(e, Event) and e.event_id is None)))
    for index, event in enumerate(batch):
        if not isinstance(event, Event):
            raise ValidationError(
                f"append: item {index} is a {type(event).__name__}, not an esf.Event", errors={str(index): "not Event"}
            )
        p = _prepare_one(event, max_event_bytes, now, mono, pid, fresh_ids)
        previous = seen.get(p.event_id)
        if previous is not None and previous != p.content_hash:
            raise DuplicateEventId(
                f"event id {p.event_id} appears twice in one batch with different content", event_id=p.event_id
            )
        seen[p.event_id] = p.content_hash
        yield p


_FLAT_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat_frozen(value: dict[str, Any]) -> FrozenDict | None:
    """The frozen copy of a dict of scalars and lists of scalars (string keys), else ``None``.

    Such a dict survives the JSON round trip unchanged (NaN and infinities are
    refused by the encoder first), so it is copied without decoding.
    """
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return None
        if kind in _FLAT_SCALARS:
            out[key] = item
        elif kind is list:
            for x in item:
                if type(x) not in _FLAT_SCALARS:
                    return None
            out[key] = FrozenList(item)
        else:
            return None
    return FrozenDict(out)


def _json_text(value: Any, what: str) -> tuple[str, dict[str, Any]]:
    """Canonical JSON text of a JSON object and a deep copy of it (deep-frozen on the fast path).

    Fast paths: a dict of scalars and lists of scalars is encoded and copied
    (:func:`_flat_frozen`); any other dict is encoded, decoded (to the frozen
    form) and compared, in C. A value the encoder changes on the way (int keys,
    tuples, non-dict mappings) or refuses (NaN, bytes, …) falls back to
    :func:`check_json_object`, which copies it or names the problem.
    """
    if type(value) is dict:
        if not value:
            return "{}", FrozenDict()
        try:
            text = canonical_json(value)
            flat = _flat_frozen(value)
            if flat is not None and "\\u0000" not in text:
                return text, flat
            copy = _decode_frozen(text)
            if copy == value and "\\u0000" not in text:
                return text, copy
        except (TypeError, ValueError, RecursionError):
            pass
    try:
        copy = check_json_object(value, what)
        return canonical_json(copy), copy
    except RecursionError:
        raise SerializationError(f"{what}: nested too deeply", errors={what: "too deep"}) from None
    except ValueError as exc:
        raise SerializationError(f"{what}: not valid JSON ({exc})", errors={what: "not JSON"}) from None


def _dumps(value: str | None) -> str:
    return "null" if value is None else str(_encode_string(value))


def _prepare_one(
    event: Event, max_bytes: int, now: datetime, mono: int, pid: int, fresh_ids: Iterator[str]
) -> PreparedEvent:
    event_type = check_event_type(event.type)
    stream_id = check_stream_id(DEFAULT_STREAM_ID if event.stream_id is None else event.stream_id)
    new_id = event.event_id is None
    event_id = next(fresh_ids) if new_id else check_event_id(event.event_id)
    correlation_id = _check_ref(event.correlation_id, "correlation_id")
    parent_id = _check_ref(event.parent_id, "parent_id")
    data_json, data = _json_text(event.data, "data")
    metadata_json, metadata = _json_text(event.metadata, "metadata")
    # == canonical_json({...}) of the content (keys in sorted order), without encoding data twice.
    canonical = (
        f'{{"correlation_id":{_dumps(correlation_id)},"data":{data_json},"metadata":{metadata_json},'
        f'"parent_id":{_dumps(parent_id)},"stream_id":{_dumps(stream_id)},"type":{_dumps(event_type)}}}'
    )
    try:
        encoded = canonical.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise SerializationError(f"event {event_type}: cannot be encoded as UTF-8 ({exc.reason})") from None
    size = len(encoded) + len(event_id)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"event {event_type} is {size} bytes of JSON; the limit is {max_bytes} bytes "
            "(settings.events.max_event_bytes): store large blobs elsewhere and reference them",
            size=size,
            limit=max_bytes,
        )
    # PreparedEvent(...) without the frozen dataclass's per-field __setattr__ (same fields, same result).
    prepared: PreparedEvent = _new_object(PreparedEvent)
    _set_attribute(
        prepared,
        "__dict__",
        {
            "event_id": event_id,
            "stream_id": stream_id,
            "event_type": event_type,
            "correlation_id": correlation_id,
            "parent_id": parent_id,
            "data": data,
            "metadata": metadata,
            "content_hash": hashlib.sha256(encoded).hexdigest(),
            "recorded_at": now,
            "monotonic_ns": mono,
            "pid": pid,
            "data_json": data_json,
            "metadata_json": metadata_json,
            "new_id": new_id,
        },
    )
    return prepared


_new_object = object.__new__
_set_attribute = object.__setattr__
