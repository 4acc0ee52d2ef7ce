"""Metric and label names: validation and conversion for exporters.

A metric name is ``^[a-zA-Z_:][a-zA-Z0-9_:.]*$``, at most 200 characters:
the Prometheus alphabet plus ``.`` as a namespace separator
(``esf.jobs.enqueued``). Exporters that do not accept dots (Prometheus)
replace each ``.`` with ``_``. A label name is ``^[a-zA-Z_][a-zA-Z0-9_]*$``,
at most 100 characters, and may not start with ``__`` (reserved, as in
Prometheus); ``le`` and ``quantile`` are refused too, since Prometheus
histograms and summaries use them. Label values are strings of at most 500
characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..errors import ValidationError

#: Metric names: the Prometheus alphabet plus ``.``.
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:.]*$")
#: Label names: the Prometheus label alphabet.
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Longest accepted metric name (characters).
MAX_METRIC_NAME_CHARS = 200
#: Longest accepted label name (characters).
MAX_LABEL_NAME_CHARS = 100
#: Longest accepted label value (characters).
MAX_LABEL_VALUE_CHARS = 500
#: Value given to every label of the series that absorbs label sets beyond the cap.
OVERFLOW_LABEL_VALUE = "__overflow__"

LabelTuple = tuple[tuple[str, str], ...]

_RESERVED_LABELS = frozenset({"le", "quantile"})


def check_metric_name(name: object) -> str:
    """Return ``name`` when it is a valid metric name.

    Raises
    ------
    ValidationError
        When ``name`` is not a string matching :data:`METRIC_NAME_RE`.
    """
    if not isinstance(name, str) or not METRIC_NAME_RE.match(name) or len(name) > MAX_METRIC_NAME_CHARS:
        raise ValidationError(
            f"metric name {name!r} is not valid: use letters, digits, '_', ':' and '.', not starting with a digit "
            f"or '.', at most {MAX_METRIC_NAME_CHARS} characters (example: 'billing.charges')",
            errors={"name": "invalid metric name"},
        )
    if ".." in name or name.endswith("."):
        raise ValidationError(
            f"metric name {name!r} is not valid: '.' separates non-empty parts (example: 'billing.charges')",
            errors={"name": "invalid metric name"},
        )
    return name


def check_labels(labels: Mapping[str, str] | None) -> LabelTuple:
    """Validate ``labels`` and return them as a sorted tuple of pairs.

    Raises
    ------
    ValidationError
        When a label name is not valid or a value is not a string.
    """
    if not labels:
        return ()
    if not isinstance(labels, Mapping):
        raise ValidationError(f"labels must be a mapping of str to str, not {type(labels).__name__}")
    pairs = []
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or not LABEL_NAME_RE.match(key)
            or key.startswith("__")
            or key in _RESERVED_LABELS
            or len(key) > MAX_LABEL_NAME_CHARS
        ):
            raise ValidationError(
                f"label name {key!r} is not valid: use letters, digits and '_', not starting with a digit or '__', "
                "and not 'le' or 'quantile'",
                errors={f"labels.{key}": "invalid label name"},
            )
        if not isinstance(value, str):
            raise ValidationError(
                f"label {key!r}: value must be a string, not {type(value).__name__} (convert it with str())",
                errors={f"labels.{key}": "not a string"},
            )
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise ValidationError(
                f"label {key!r}: value longer than {MAX_LABEL_VALUE_CHARS} characters",
                errors={f"labels.{key}": "too long"},
            )
        pairs.append((key, value))
    pairs.sort()
    return tuple(pairs)


def check_number(value: object, what: str, *, allow_negative: bool = True) -> float:
    """Return ``value`` as a finite number.

    Raises
    ------
    ValidationError
        When ``value`` is not an int or float, is NaN or infinite, or is negative and ``allow_negative`` is false.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValidationError(f"{what}: {value!r} is not a finite number")
    if not allow_negative and value < 0:
        raise ValidationError(f"{what}: {value!r} is negative")
    return value


def prometheus_name(name: str) -> str:
    """The Prometheus form of a metric name: every ``.`` becomes ``_``."""
    return name.replace(".", "_")


def statsd_name(name: str, labels: LabelTuple) -> str:
    """The StatsD form: the metric name, then each label value, dot-separated and sanitised."""
    parts = [name, *(_STATSD_UNSAFE.sub("_", v) or "_" for _, v in labels)]
    return ".".join(parts)


_STATSD_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
