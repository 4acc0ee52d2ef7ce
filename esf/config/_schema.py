"""Schemas and rules of the configuration: validation, defaults, read-only, restricted and secret paths."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError
from ._paths import DELETE, deep_merge, is_under, lookup, overlaps, path_error, set_path
from ._types import REDACTED

__all__ = ["Rules", "SchemaSource", "Validator"]

#: A pydantic model class or a JSON Schema (a mapping).
SchemaSource = Any
#: A validator of the document a batch would produce: ``(document, changed paths) -> {path: problem}``.
Validator = Callable[[Mapping[str, Any], Collection[str]], Mapping[str, str]]


@dataclass
class _Schema:
    prefix: str
    json_schema: Mapping[str, Any]
    model: Any = None  # a pydantic model class, when given one
    validator: Any = None  # a jsonschema validator, when given a JSON Schema


@dataclass
class Rules:
    """Everything registered by the application: schemas, defaults and path rules.

    Mutated only by ``ConfigService.register_schema`` under the service's lock.
    """

    schemas: list[_Schema] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)
    restricted: dict[str, frozenset[str]] = field(default_factory=dict)
    secret: set[str] = field(default_factory=set)
    #: Allowlist of writable subtrees; ``None`` (no allowlist registered): everything not protected.
    writable: set[str] | None = None
    #: Validators in code, each with the subtrees whose changes it checks.
    validators: list[tuple[tuple[str, ...], Validator]] = field(default_factory=list)

    def add(
        self,
        schema: SchemaSource | None,
        *,
        prefix: str,
        defaults: Mapping[str, Any] | None,
        read_only: Iterable[str],
        restricted: Mapping[str, Collection[str]] | None,
        secret: Iterable[str],
        writable: Iterable[str] | None = None,
    ) -> None:
        """Register one schema and its rules (see ``ConfigService.register_schema``)."""
        errors: dict[str, str] = {}
        if prefix:
            problem = path_error(prefix)
            if problem:
                errors["prefix"] = problem
        writable = list(writable) if writable is not None else None
        all_paths = list(read_only) + list(restricted or {}) + list(secret) + list(writable or [])
        for p in all_paths:
            problem = path_error(p)
            if problem:
                errors[str(p)] = problem
        if errors:
            raise ValidationError("invalid schema registration", errors=errors)
        new_defaults: dict[str, Any] = {}
        if schema is not None:
            entry = _compile(schema, prefix)
            self.schemas.append(entry)
            extracted = _defaults_of(entry.json_schema, entry.json_schema)
            if isinstance(extracted, dict):
                new_defaults = _nest(prefix, extracted)
            ro, wo = _flags_of(entry.json_schema, entry.json_schema, prefix)
            self.read_only.update(ro)
            self.secret.update(wo)
        if defaults:
            new_defaults = deep_merge(new_defaults, _nest(prefix, dict(defaults)))
        self.defaults = deep_merge(self.defaults, new_defaults)
        self.read_only.update(_join(prefix, p) for p in read_only)
        for p, actors in (restricted or {}).items():
            self.restricted[_join(prefix, p)] = frozenset(actors)
        self.secret.update(_join(prefix, p) for p in secret)
        if writable is not None:
            self.writable = (self.writable or set()) | {_join(prefix, p) for p in writable}

    # -- checks -----------------------------------------------------------

    def read_only_paths(self, paths: Iterable[str]) -> list[str]:
        """The paths of a batch that touch a read-only path (inside or above it)."""
        return [p for p in paths if any(overlaps(p, ro) for ro in self.read_only)]

    def denied_paths(self, paths: Iterable[str], actor: str | None) -> list[str]:
        """The paths of a batch outside the allowlist (if any), or restricted to other actors than ``actor``."""
        out = []
        for p in paths:
            if self.writable is not None and not any(is_under(p, w) for w in self.writable):
                out.append(p)
                continue
            for pattern, actors in self.restricted.items():
                if overlaps(p, pattern) and actor not in actors:
                    out.append(p)
                    break
        return out

    def validate(self, effective: Mapping[str, Any], changed: Collection[str]) -> dict[str, str]:
        """Schema problems of ``effective`` (the document with defaults) that concern a changed path."""
        problems: dict[str, str] = {}
        for entry in self.schemas:
            if not any(overlaps(c, entry.prefix) for c in changed):
                continue
            try:
                sub = lookup(effective, tuple(entry.prefix.split("."))) if entry.prefix else effective
            except KeyError:
                sub = {}
            for path, problem in _schema_errors(entry, sub):
                if any(overlaps(path, c) for c in changed):
                    problems.setdefault(path, problem)
        for prefixes, validator in self.validators:
            if any(overlaps(c, p) for c in changed for p in prefixes):
                for path, problem in validator(effective, changed).items():
                    problems.setdefault(path, problem)
        return problems


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _nest(prefix: str, value: dict[str, Any]) -> dict[str, Any]:
    if not prefix:
        return value
    out: dict[str, Any] = {}
    set_path(out, tuple(prefix.split(".")), value)
    return out


def _compile(schema: SchemaSource, prefix: str) -> _Schema:
    if isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate_json"):
        return _Schema(prefix, schema.model_json_schema(), model=schema)
    if isinstance(schema, Mapping):
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(dict(schema))
        except jsonschema.SchemaError as exc:
            raise ValidationError(f"invalid JSON Schema: {exc.message}", errors={"schema": exc.message}) from None
        return _Schema(prefix, schema, validator=cls(schema))
    raise ValidationError(
        f"a schema is a pydantic model class or a JSON Schema mapping, not {type(schema).__name__}",
        errors={"schema": "unsupported schema type"},
    )


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        if isinstance(target, Mapping):
            return target
    return node


def _defaults_of(node: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> Any:
    """The defaults a schema declares: ``default`` keywords, nested through ``properties``."""
    node = _resolve(node, root)
    if "default" in node:
        return node["default"]
    if depth > 32:
        return DELETE
    props = node.get("properties")
    if not isinstance(props, Mapping):
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
            return _defaults_of(all_of[0], root, depth + 1)
        return DELETE
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if isinstance(sub, Mapping) and path_error(name) is None:
            value = _defaults_of(sub, root, depth + 1)
            if value is not DELETE and value != {}:
                out[name] = value
    return out


def _flags_of(node: Mapping[str, Any], root: Mapping[str, Any], path: str, depth: int = 0) -> tuple[set[str], set[str]]:
    """Paths marked ``readOnly`` and ``writeOnly`` (secrets; pydantic's ``SecretStr``) in a schema."""
    ro: set[str] = set()
    wo: set[str] = set()
    node = _resolve(node, root)
    if depth > 32:
        return ro, wo
    if path and node.get("readOnly") is True:
        ro.add(path)
    if path and node.get("writeOnly") is True:
        wo.add(path)
    props = node.get("properties")
    if isinstance(props, Mapping):
        for name, sub in props.items():
            if isinstance(sub, Mapping) and path_error(name) is None:
                a, b = _flags_of(sub, root, _join(path, name), depth + 1)
                ro |= a
                wo |= b
    for key in ("allOf", "anyOf"):
        subs = node.get(key)
        if isinstance(subs, list):
            for sub in subs:
                if isinstance(sub, Mapping):
                    a, b = _flags_of(sub, root, path, depth + 1)
                    ro |= a
                    wo |= b
    return ro, wo


def _schema_errors(entry: _Schema, instance: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if entry.model is not None:
        from pydantic import ValidationError as PydanticValidationError

        try:
            entry.model.model_validate_json(json.dumps(instance), strict=True)
        except PydanticValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                out.append((_loc_path(entry.prefix, err.get("loc", ())), str(err.get("msg", "invalid"))))
        return out
    for error in entry.validator.iter_errors(instance):
        base = _loc_path(entry.prefix, tuple(error.absolute_path))
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            known = set((error.schema or {}).get("properties", {}))
            for key in error.instance:
                if key not in known:
                    out.append((_join(base, str(key)) if base else str(key), "unknown path (the schema is closed)"))
        elif error.validator == "required" and isinstance(error.instance, Mapping):
            for key in error.validator_value:
                if key not in error.instance:
                    out.append((_join(base, str(key)) if base else str(key), "required and missing"))
        else:
            # Never echo the offending value: it may be a secret.
            out.append((base or entry.prefix or "(root)", _describe(error)))
    return out


def _describe(error: Any) -> str:
    kind = error.validator
    expected = error.validator_value
    if kind == "type":
        return f"wrong type: expected {expected}"
    if kind in ("enum", "const"):
        return f"not an allowed value ({kind})"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength"):
        return f"violates {kind} {expected}"
    return f"violates {kind}"


def _loc_path(prefix: str, loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) or not isinstance(item, str) or path_error(item) is not None:
            break  # paths stop at lists: the list is one value
        parts.append(item)
    tail = ".".join(parts)
    if prefix and tail:
        return f"{prefix}.{tail}"
    return prefix or tail


def redact(tree: Mapping[str, Any], prefixes: Collection[str], path: str = "") -> dict[str, Any]:
    """A copy of ``tree`` with every value at or under a secret prefix replaced by ``REDACTED``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        sub = _join(path, key)
        if any(is_under(sub, p) for p in prefixes):
            out[key] = REDACTED
        elif isinstance(value, Mapping) and any(is_under(p, sub) for p in prefixes):
            out[key] = redact(value, prefixes, sub)
        else:
            out[key] = value
    return out


def redact_value(path: str, value: Any, prefixes: Collection[str]) -> Any:
    """``value`` as stored at ``path``, with secret parts replaced by ``REDACTED``."""
    if value is DELETE:
        return value
    if any(is_under(path, p) for p in prefixes):
        return REDACTED
    if isinstance(value, Mapping):
        return redact(value, prefixes, path)
    return value
