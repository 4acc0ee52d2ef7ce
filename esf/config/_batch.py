"""Checking a batch, building the next document, and restoring redacted secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from typing import Any

from .._json import MAX_DEPTH, check_json
from ..errors import PermissionDenied, SerializationError, ValidationError, describe_errors
from ._paths import DELETE, is_under, leaf_diff, overlaps, path_error, set_path, thaw, thaw_plain
from ._schema import Rules, redact, redact_value
from ._types import REDACTED, Change, HistoryEntry, StoredConfig

__all__ = ["Denied", "apply_changes", "check_batch", "copy_document", "make_entry", "restore_secrets"]


class Denied(PermissionDenied):
    """A batch touches protected paths (carries them, and why, for the audit)."""

    def __init__(self, message: str, *, paths: list[str], reason: str) -> None:
        super().__init__(message, paths=paths)
        self.paths = paths
        self.reason = reason


def check_batch(
    changes: Mapping[str, Any], rules: Rules, actor: str | None, max_value_bytes: int
) -> tuple[dict[str, Any], frozenset[str]]:
    """Check paths, permissions, values and sizes; return plain JSON values and the new secret paths.

    Raises:
        ValidationError: malformed or overlapping paths, non-JSON or oversize values, non-string secrets.
        Denied: read-only paths, or paths restricted to other actors.
    """
    if not isinstance(changes, Mapping) or not changes:
        raise ValidationError("a batch is a non-empty mapping of path -> value", errors={"(batch)": "empty"})
    errors: dict[str, str] = {}
    paths = list(changes)
    for path in paths:
        problem = path_error(path)
        if problem:
            errors[str(path)] = problem
    if errors:
        raise ValidationError(f"invalid paths: {describe_errors(errors)}", errors=errors)
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if overlaps(a, b):
                errors[b] = f"overlaps {a!r} in the same batch"
    if errors:
        raise ValidationError(f"invalid batch: {describe_errors(errors)}", errors=errors)
    ro = rules.read_only_paths(paths)
    if ro:
        raise Denied(f"read-only paths: {', '.join(ro)}", paths=ro, reason="read-only")
    denied = rules.denied_paths(paths, actor)
    if denied:
        raise Denied(
            f"paths outside the writable allowlist or restricted to other actors than {actor!r}: "
            f"{', '.join(denied)}",
            paths=denied,
            reason="restricted",
        )
    prepared: dict[str, Any] = {}
    secrets: set[str] = set()
    for path, value in changes.items():
        if value is DELETE:
            prepared[path] = DELETE
            continue
        found: dict[str, str] = {}
        try:
            plain = thaw(value, path, found, secrets)
            if not found:
                check_json(plain, path)
        except RecursionError:
            found[path] = f"nested deeper than {MAX_DEPTH} levels"
        except SerializationError as exc:
            found[path] = str(exc)
        if found:
            errors.update(found)
            continue
        size = len(json.dumps(plain, separators=(",", ":")).encode())
        if size > max_value_bytes:
            errors[path] = f"value is {size} bytes; the limit is {max_value_bytes} (config.max_value_bytes)"
            continue
        prepared[path] = plain
    if errors:
        raise ValidationError(f"invalid values: {describe_errors(errors)}", errors=errors)
    prefixes = rules.secret | secrets
    for path, value in prepared.items():
        for leaf, leaf_value in _leaves_at(path, value):
            if any(is_under(leaf, p) for p in prefixes) and not isinstance(leaf_value, str):
                errors[leaf] = "a secret value must be a string"
    if errors:
        raise ValidationError(f"invalid values: {describe_errors(errors)}", errors=errors)
    return prepared, frozenset(secrets)


def copy_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, plain, mutable copy of a JSON document."""
    copied: dict[str, Any] = json.loads(json.dumps(thaw_plain(document)))
    return copied


def apply_changes(
    base: StoredConfig, prepared: Mapping[str, Any], new_secrets: frozenset[str]
) -> tuple[dict[str, Any], frozenset[str]]:
    """The document and secret paths after applying checked changes to ``base``."""
    document = copy_document(base.document)
    secrets = set(base.secrets)
    for path, value in prepared.items():
        set_path(document, tuple(path.split(".")), value)
        secrets = {s for s in secrets if not is_under(s, path)}
    return document, frozenset(secrets | new_secrets)


def restore_secrets(
    document: dict[str, Any], prefixes: Collection[str], source: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """Replace redacted secrets in ``document`` by their clear value in ``source``, in place.

    Returns:
        ``(restored, dropped)``: paths given their value from ``source``, and paths
        removed because ``source`` no longer has them.
    """
    restored: list[str] = []
    dropped: list[str] = []
    for path in _redacted_paths(document, "", prefixes):
        parts = tuple(path.split("."))
        try:
            value: Any = source
            for part in parts:
                value = value[part]
        except (KeyError, TypeError):
            set_path(document, parts, DELETE)
            dropped.append(path)
            continue
        set_path(document, parts, value)
        restored.append(path)
    return restored, dropped


def make_entry(
    base: StoredConfig,
    document: Mapping[str, Any],
    secrets: frozenset[str],
    rules: Rules,
    *,
    actor: str | None,
    node: str,
    rollback_of: int | None,
) -> tuple[HistoryEntry, list[tuple[str, Any, Any]]]:
    """The history entry of the version after ``base`` (secrets redacted), and the clear leaf diff."""
    prefixes = rules.secret | base.secrets | secrets
    diff = leaf_diff(base.document, document)
    entry = HistoryEntry(
        version=base.version + 1,
        at=time.time(),
        actor=actor,
        node=node,
        changes=tuple(Change(p, redact_value(p, o, prefixes), redact_value(p, n, prefixes)) for p, o, n in diff),
        document=redact(document, prefixes),
        rollback_of=rollback_of,
        secrets=tuple(sorted(secrets)),
    )
    return entry, diff


def _leaves_at(path: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for key, sub in value.items():
            out.extend(_leaves_at(f"{path}.{key}", sub))
        return out
    return [(path, value)]


def _redacted_paths(tree: Mapping[str, Any], path: str, prefixes: Collection[str]) -> list[str]:
    """Paths of ``tree`` that hold a redacted secret (under a secret prefix and equal to ``REDACTED``)."""
    out: list[str] = []
    for key, value in tree.items():
        sub = f"{path}.{key}" if path else key
        if value == REDACTED and any(is_under(sub, p) for p in prefixes):
            out.append(sub)
        elif isinstance(value, Mapping):
            out.extend(_redacted_paths(value, sub, prefixes))
    return out
