"""Attribute conditions of flags and segments: checked and compiled to closures when a definition is read.

A compiled condition is a function of the evaluation context returning a bool.
It raises :class:`EvaluationFailed` when an attribute it needs has the wrong
type, and ``KeyError`` (the attribute's name) when it is missing: no call or
``try`` on the hot path; ``CompiledFlag.evaluate`` turns it into
``EvaluationFailed``. Either way the caller gets its default with reason ``error``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

__all__ = [
    "COMPARISONS",
    "OPERATORS",
    "Condition",
    "DefinitionError",
    "EvaluationFailed",
    "compile_condition",
    "parse_semver",
]

#: A compiled condition: ``context -> bool``; raises EvaluationFailed.
Condition = Callable[[Mapping[str, Any]], bool]
#: Operators of an attribute condition.
OPERATORS = ("eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "starts_with", "regex", "exists")
#: Ordering operators; they compare ``as`` numbers (default), semantic versions or ISO dates.
COMPARISONS = ("lt", "lte", "gt", "gte")
#: What an ordering operator compares.
KINDS = ("number", "semver", "date")
#: Longest regular expression accepted (characters).
MAX_REGEX_CHARS = 1000
#: Deepest nesting of all/any/not.
MAX_DEPTH = 16

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)


class DefinitionError(Exception):
    """A flag or segment definition is invalid; ``where`` locates the problem inside it (``rules[1].if``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


class EvaluationFailed(Exception):
    """An evaluation cannot be answered (missing attribute, wrong type, bad context)."""


def parse_semver(text: str) -> tuple[Any, ...]:
    """A sort key of a semantic version (2.0.0 precedence; ``1.2`` is ``1.2.0``; a leading ``v`` is allowed).

    Raises:
        ValueError: ``text`` is not a semantic version.
    """
    m = _SEMVER.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a semantic version")
    major, minor, patch, pre = m.group(1), m.group(2), m.group(3), m.group(4)
    core = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:
        return (*core, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, 0, ids)


def _parse_date(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        raise ValueError(f"a {type(value).__name__} is not an ISO date")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a {type(value).__name__} is not a number")
    return float(value)


def _parse_semver_value(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a semantic version")
    return parse_semver(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {"number": _parse_number, "semver": _parse_semver_value,
                                             "date": _parse_date}


def canon(value: Any) -> tuple[str, Any]:
    """``value`` tagged by JSON kind, so that ``true`` never equals ``1`` and ``1`` equals ``1.0``."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return ("other", id(value))  # lists and objects never equal a listed scalar


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def compile_condition(node: Any, where: str, segments: Mapping[str, Condition], depth: int = 0) -> Condition:
    """Check ``node`` and compile it.

    Forms: ``{"attr": A, "op": OP, "value": V, "as": KIND}``, ``{"all": [...]}``,
    ``{"any": [...]}``, ``{"not": C}``, ``{"segment": NAME}``.

    Raises:
        DefinitionError: ``node`` is not a valid condition (``where`` names its place).
    """
    if depth > MAX_DEPTH:
        raise DefinitionError(where, f"conditions nest deeper than {MAX_DEPTH} levels")
    if not isinstance(node, Mapping):
        raise DefinitionError(where, f"a condition is an object, not {type(node).__name__}")
    forms = [k for k in ("attr", "all", "any", "not", "segment") if k in node]
    if len(forms) != 1:
        raise DefinitionError(where, "a condition has exactly one of attr, all, any, not, segment")
    form = forms[0]
    if form in ("all", "any"):
        _only(node, {form}, where)
        items = node[form]
        if not isinstance(items, list | tuple) or not items:
            raise DefinitionError(f"{where}.{form}", "must be a non-empty list of conditions")
        parts = tuple(compile_condition(c, f"{where}.{form}[{i}]", segments, depth + 1) for i, c in enumerate(items))
        return _combine(form, parts)
    if form == "not":
        _only(node, {"not"}, where)
        inner = compile_condition(node["not"], f"{where}.not", segments, depth + 1)
        return lambda ctx: not inner(ctx)
    if form == "segment":
        _only(node, {"segment"}, where)
        name = node["segment"]
        if not isinstance(name, str) or name not in segments:
            raise DefinitionError(f"{where}.segment", f"no segment named {name!r}")
        return segments[name]
    return _compile_attr(node, where)


def _only(node: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(node) - allowed)
    if extra:
        raise DefinitionError(where, f"unknown key {extra[0]!r}")


def _compile_attr(node: Mapping[str, Any], where: str) -> Condition:
    _only(node, {"attr", "op", "value", "as"}, where)
    attr, op = node["attr"], node.get("op")
    if not isinstance(attr, str) or not attr:
        raise DefinitionError(f"{where}.attr", "must be a non-empty string")
    if op not in OPERATORS:
        raise DefinitionError(f"{where}.op", f"{op!r} is not an operator ({', '.join(OPERATORS)})")
    kind = node.get("as")
    if kind is not None and (kind not in KINDS or op not in (*COMPARISONS, "eq", "neq")):
        raise DefinitionError(f"{where}.as", f"'as' is one of {', '.join(KINDS)}, for eq, neq, lt, lte, gt, gte")
    if op == "exists":
        want = node.get("value", True)
        if not isinstance(want, bool):
            raise DefinitionError(f"{where}.value", "exists takes true or false")
        return (lambda ctx: attr in ctx) if want else (lambda ctx: attr not in ctx)
    if "value" not in node:
        raise DefinitionError(f"{where}.value", f"{op} needs a value")
    value = node["value"]
    if op in COMPARISONS or (kind is not None):
        return _compile_ordered(attr, op, value, kind or "number", where)
    if op in ("eq", "neq"):
        if not _is_scalar(value):
            raise DefinitionError(f"{where}.value", f"{op} compares with a string, number, boolean or null")
        target = canon(value)
        if isinstance(value, str):  # the common case, without tagging the attribute's value
            if op == "eq":
                return lambda ctx: (x := ctx[attr]) == value and type(x) is str
            return lambda ctx: not ((x := ctx[attr]) == value and type(x) is str)
        if op == "eq":
            return lambda ctx: canon(ctx[attr]) == target
        return lambda ctx: canon(ctx[attr]) != target
    if op in ("in", "not_in"):
        if not isinstance(value, list | tuple) or not value or not all(_is_scalar(v) for v in value):
            raise DefinitionError(f"{where}.value", f"{op} takes a non-empty list of strings, numbers or booleans")
        members = frozenset(canon(v) for v in value)
        if all(isinstance(v, str) for v in value):  # strings only: no tagging needed
            strings = frozenset(value)
            if op == "in":
                return lambda ctx: (x := ctx[attr]) in strings and type(x) is str
            return lambda ctx: not ((x := ctx[attr]) in strings and type(x) is str)
        if op == "in":
            return lambda ctx: canon(ctx[attr]) in members
        return lambda ctx: canon(ctx[attr]) not in members
    if op == "starts_with":
        prefixes = (value,) if isinstance(value, str) else value
        if not isinstance(prefixes, list | tuple) or not prefixes or not all(isinstance(p, str) for p in prefixes):
            raise DefinitionError(f"{where}.value", "starts_with takes a string or a non-empty list of strings")
        frozen = tuple(prefixes)
        return lambda ctx: _get_str(ctx, attr).startswith(frozen)
    # regex
    if not isinstance(value, str) or len(value) > MAX_REGEX_CHARS:
        raise DefinitionError(f"{where}.value", f"regex takes a pattern of at most {MAX_REGEX_CHARS} characters")
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise DefinitionError(f"{where}.value", f"invalid regular expression: {exc}") from None
    search = pattern.search
    return lambda ctx: search(_get_str(ctx, attr)) is not None


def _compile_ordered(attr: str, op: str, value: Any, kind: str, where: str) -> Condition:
    parse = _PARSERS[kind]
    try:
        bound = parse(value)
    except ValueError as exc:
        raise DefinitionError(f"{where}.value", f"not a {kind}: {exc}") from None

    def parsed(raw: Any) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise EvaluationFailed(f"attribute {attr!r}: {exc}") from None

    compare = _COMPARE[op]
    if kind == "number":
        # The common case without a parse call: ints and floats compare as they are (a bool is not a number).
        def number(ctx: Mapping[str, Any]) -> bool:
            x = ctx[attr]
            if type(x) is int or type(x) is float:
                return compare(x, bound)
            return compare(parsed(x), bound)

        return number
    return lambda ctx: compare(parsed(ctx[attr]), bound)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt,
                                                   "lte": operator.le, "gt": operator.gt, "gte": operator.ge}


def _combine(form: str, parts: tuple[Condition, ...]) -> Condition:
    """``all``/``any`` of ``parts``, without a generator for one or two parts (the common cases)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        if form == "all":
            return lambda ctx: a(ctx) and b(ctx)
        return lambda ctx: a(ctx) or b(ctx)
    if form == "all":
        return lambda ctx: all(p(ctx) for p in parts)
    return lambda ctx: any(p(ctx) for p in parts)


def _get_str(ctx: Mapping[str, Any], attr: str) -> str:
    value = ctx[attr]
    if not isinstance(value, str):
        raise EvaluationFailed(f"attribute {attr!r} is a {type(value).__name__}, not a string")
    return value
