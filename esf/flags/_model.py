"""Flag and segment definitions: checked when written, compiled once per configuration version, evaluated in memory.

A flag lives at ``flags.<name>`` in the configuration, a segment at
``flag_segments.<name>``. See ``docs/flags.md`` for the definition format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._conditions import Condition, DefinitionError, EvaluationFailed, compile_condition
from ._serve import Serve, compile_serve, sticky_attribute
from ._values import (
    FLAGS_PREFIX,
    MAX_VARIANT_CHARS,
    REASON_DEFAULT,
    REASON_DISABLED,
    REASON_KILL_SWITCH,
    REASON_PREREQUISITE_FAILED,
    REASON_RULE_MATCH,
    REASON_TARGET_MATCH,
    SEGMENTS_PREFIX,
    Evaluation,
)

__all__ = ["Compiled", "CompiledFlag", "compile_all"]

_FLAG_KEYS = frozenset({"description", "enabled", "kill", "variants", "on_variant", "off_variant", "by", "allow",
                        "deny", "targets", "prerequisites", "rules", "serve"})
_SEGMENT_KEYS = frozenset({"description", "if", "include", "exclude", "by"})
_DEFAULT_VARIANTS: Mapping[str, Any] = {"on": True, "off": False}


class CompiledFlag:
    """One flag, ready to evaluate without parsing anything."""

    __slots__ = ("by", "deny", "enabled", "kill", "name", "off", "prerequisites", "rules", "serve", "targets",
                 "variants")

    def __init__(self, name: str) -> None:
        self.name = name
        self.variants: Mapping[str, Any] = {}
        self.enabled = True
        self.kill = False
        self.by = "key"
        self.off: dict[str, Evaluation] = {}
        self.deny: frozenset[str] = frozenset()
        self.targets: dict[str, Evaluation] = {}
        self.prerequisites: tuple[tuple[str, frozenset[str]], ...] = ()
        self.rules: tuple[tuple[Condition, Serve], ...] = ()
        self.serve: Serve | None = None

    def evaluate(self, ctx: Mapping[str, Any], flags: Mapping[str, CompiledFlag], depth: int = 0) -> Evaluation:
        """The answer for ``ctx``; ``flags`` resolves prerequisites.

        Raises:
            EvaluationFailed: an attribute a reached rule needs is missing or of the wrong type.
        """
        if self.kill:
            return self.off[REASON_KILL_SWITCH]
        if not self.enabled:
            return self.off[REASON_DISABLED]
        for name, wanted in self.prerequisites:
            parent = flags.get(name)
            if parent is None or depth > 32:
                raise EvaluationFailed(f"prerequisite flag {name!r} is not defined")
            if parent.evaluate(ctx, flags, depth + 1).variant not in wanted:
                return self.off[REASON_PREREQUISITE_FAILED]
        if self.targets or self.deny:
            key = ctx.get(self.by)
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if isinstance(key, str):
                if key in self.deny:
                    return self.off[REASON_TARGET_MATCH]
                hit = self.targets.get(key)
                if hit is not None:
                    return hit
        try:
            for condition, serve in self.rules:
                if condition(ctx):
                    return serve.pick(ctx)
            assert self.serve is not None
            return self.serve.pick(ctx)
        except KeyError as exc:  # conditions and rollouts index the context directly (no call per attribute)
            raise EvaluationFailed(f"attribute {exc.args[0]!r} is missing from the context") from None


@dataclass(frozen=True)
class Compiled:
    """Every flag and segment of one configuration version.

    ``flags`` holds the flags that compiled; ``problems`` maps the configuration
    path of each invalid definition to its problem; ``refs`` maps each
    definition's path to the paths it depends on (segments, prerequisites).
    """

    flags: Mapping[str, CompiledFlag]
    problems: Mapping[str, str]
    refs: Mapping[str, frozenset[str]]


def compile_all(flags: Any, segments: Any) -> Compiled:
    """Check and compile the ``flags`` and ``flag_segments`` subtrees of one configuration document."""
    problems: dict[str, str] = {}
    refs: dict[str, frozenset[str]] = {}
    if flags is None:
        flags = {}
    if segments is None:
        segments = {}
    if not isinstance(flags, Mapping):
        problems[FLAGS_PREFIX] = "must be an object of flag definitions"
        flags = {}
    if not isinstance(segments, Mapping):
        problems[SEGMENTS_PREFIX] = "must be an object of segment definitions"
        segments = {}
    compiled_segments = _compile_segments(segments, problems, refs)
    out: dict[str, CompiledFlag] = {}
    for name, definition in flags.items():
        path = f"{FLAGS_PREFIX}.{name}"
        refs[path] = _flag_refs(definition)
        try:
            out[name] = _compile_flag(name, definition, compiled_segments)
        except DefinitionError as exc:
            problems[path] = f"flag {name!r}: {exc}"
    _check_prerequisites(flags, out, problems)
    return Compiled(out, problems, refs)


def _segment_refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, Mapping):
        name = node.get("segment")
        if isinstance(name, str):
            found.add(name)
        for value in node.values():
            found |= _segment_refs(value)
    elif isinstance(node, list | tuple):
        for value in node:
            found |= _segment_refs(value)
    return found


def _flag_refs(definition: Any) -> frozenset[str]:
    paths = {f"{SEGMENTS_PREFIX}.{s}" for s in _segment_refs(definition.get("rules") if isinstance(definition, Mapping)
                                                            else None)}
    if isinstance(definition, Mapping) and isinstance(definition.get("prerequisites"), list | tuple):
        for p in definition["prerequisites"]:
            name = p.get("flag") if isinstance(p, Mapping) else p
            if isinstance(name, str):
                paths.add(f"{FLAGS_PREFIX}.{name}")
    return frozenset(paths)


def _compile_segments(segments: Mapping[str, Any], problems: dict[str, str],
                      refs: dict[str, frozenset[str]]) -> dict[str, Condition]:
    """Segments in dependency order; a segment in a cycle or using a bad segment is a problem."""
    done: dict[str, Condition] = {}
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        path = f"{SEGMENTS_PREFIX}.{name}"
        definition = segments[name]
        deps = _segment_refs(definition.get("if")) if isinstance(definition, Mapping) else set()
        refs[path] = frozenset(f"{SEGMENTS_PREFIX}.{d}" for d in deps)
        state[name] = "visiting"
        for dep in sorted(deps):
            if dep in chain or dep == name:
                problems[path] = f"segment {name!r}: uses itself through {' -> '.join((*chain, name, dep))}"
            elif dep in segments and state.get(dep) is None:
                visit(dep, (*chain, name))
        state[name] = "done"
        if path in problems:
            return
        try:
            done[name] = _compile_segment(definition, done)
        except DefinitionError as exc:
            problems[path] = f"segment {name!r}: {exc}"

    for name in segments:
        visit(name, ())
    return done


def _compile_segment(definition: Any, segments: Mapping[str, Condition]) -> Condition:
    if not isinstance(definition, Mapping):
        raise DefinitionError("", "a segment is an object")
    _check_keys(definition, _SEGMENT_KEYS)
    by = sticky_attribute(definition)
    include = _keys(definition.get("include", []), "include")
    exclude = _keys(definition.get("exclude", []), "exclude")
    condition = compile_condition(definition["if"], "if", segments) if "if" in definition else None
    if condition is None and not include:
        raise DefinitionError("", "a segment needs an 'if' condition or 'include' keys")

    def member(ctx: Mapping[str, Any]) -> bool:
        key = ctx.get(by)
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if key in exclude:
            return False
        if key in include:
            return True
        return condition(ctx) if condition is not None else False

    return member


def _check_keys(definition: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in definition:
        if key not in allowed:
            raise DefinitionError(str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")

def _keys(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(k, str) for k in value):
        raise DefinitionError(where, "must be a list of key strings")
    return frozenset(value)


def _bool(definition: Mapping[str, Any], name: str, default: bool) -> bool:
    value = definition.get(name, default)
    if not isinstance(value, bool):
        raise DefinitionError(name, "must be true or false")
    return value


def _compile_flag(name: str, definition: Any, segments: Mapping[str, Condition]) -> CompiledFlag:
    if not isinstance(definition, Mapping):
        raise DefinitionError("", "a flag definition is an object")
    _check_keys(definition, _FLAG_KEYS)
    if "description" in definition and not isinstance(definition["description"], str):
        raise DefinitionError("description", "must be a string")
    flag = CompiledFlag(name)
    flag.enabled = _bool(definition, "enabled", True)
    flag.kill = _bool(definition, "kill", False)
    flag.by = sticky_attribute(definition)
    variants = definition.get("variants", _DEFAULT_VARIANTS)
    if not isinstance(variants, Mapping) or not variants:
        raise DefinitionError("variants", "must be a non-empty object {name: value}")
    for v in variants:
        if not isinstance(v, str) or not v or len(v) > MAX_VARIANT_CHARS:
            raise DefinitionError("variants", f"variant names are strings of 1 to {MAX_VARIANT_CHARS} characters")
    flag.variants = variants

    def variant(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in variants:
            raise DefinitionError(where, f"{value!r} is not a variant ({', '.join(variants)})")
        return value

    def answer(v: str, reason: str, rule: int | None = None) -> Evaluation:
        return Evaluation(name, variants[v], v, reason, rule)

    on = variant(definition.get("on_variant", "on" if "on" in variants else next(iter(variants))), "on_variant")
    off = variant(definition.get("off_variant", "off" if "off" in variants else next(iter(variants))), "off_variant")
    flag.off = {r: answer(off, r) for r in (REASON_KILL_SWITCH, REASON_DISABLED, REASON_PREREQUISITE_FAILED,
                                            REASON_TARGET_MATCH)}
    flag.deny = _keys(definition.get("deny", []), "deny")
    targets: dict[str, Evaluation] = {}
    raw_targets = definition.get("targets", {})
    if not isinstance(raw_targets, Mapping):
        raise DefinitionError("targets", "must be an object {variant: [keys]}")
    for v, keys in raw_targets.items():
        ans = answer(variant(v, "targets"), REASON_TARGET_MATCH)
        for k in _keys(keys, f"targets.{v}"):
            targets.setdefault(k, ans)
    for k in _keys(definition.get("allow", []), "allow"):
        targets.setdefault(k, answer(on, REASON_TARGET_MATCH))
    flag.targets = targets
    flag.prerequisites = _prerequisites(definition.get("prerequisites", []), name)
    rules = definition.get("rules", [])
    if not isinstance(rules, list | tuple):
        raise DefinitionError("rules", "must be a list of {if, serve}")
    compiled_rules = []
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, Mapping) or set(rule) != {"if", "serve"}:
            raise DefinitionError(where, "a rule is an object with exactly 'if' and 'serve'")
        condition = compile_condition(rule["if"], f"{where}.if", segments)
        compiled_rules.append((condition, compile_serve(rule["serve"], f"{where}.serve", name, flag.by, on, off, answer,
                                                 REASON_RULE_MATCH, i)))
    flag.rules = tuple(compiled_rules)
    flag.serve = compile_serve(definition.get("serve", {"variant": on}), "serve", name, flag.by, on, off, answer,
                        REASON_DEFAULT, None)
    return flag


def _prerequisites(value: Any, name: str) -> tuple[tuple[str, frozenset[str]], ...]:
    if not isinstance(value, list | tuple):
        raise DefinitionError("prerequisites", "must be a list of flag names or {flag, variants}")
    out: list[tuple[str, frozenset[str]]] = []
    for i, item in enumerate(value):
        where = f"prerequisites[{i}]"
        if isinstance(item, str):
            out.append((item, frozenset()))  # empty: the prerequisite's on_variant, resolved after compiling
            continue
        if not isinstance(item, Mapping) or set(item) != {"flag", "variants"} or not isinstance(item["flag"], str):
            raise DefinitionError(where, "a prerequisite is a flag name or {\"flag\": NAME, \"variants\": [...]}")
        out.append((item["flag"], _keys(item["variants"], f"{where}.variants")))
        if not out[-1][1]:
            raise DefinitionError(f"{where}.variants", "must name at least one variant")
    for flag_name, _ in out:
        if flag_name == name:
            raise DefinitionError("prerequisites", "a flag cannot be its own prerequisite")
    return tuple(out)


def _check_prerequisites(definitions: Mapping[str, Any], flags: dict[str, CompiledFlag],
                         problems: dict[str, str]) -> None:
    """Resolve prerequisites to variant sets; refuse unknown flags, unknown variants and cycles."""
    on_variants = {}
    for name, flag in flags.items():
        d = definitions[name]
        on_variants[name] = d.get("on_variant", "on" if "on" in flag.variants else next(iter(flag.variants)))
    for name, flag in list(flags.items()):
        resolved = []
        for i, (parent, wanted) in enumerate(flag.prerequisites):
            target = flags.get(parent)
            if target is None:
                problems[f"{FLAGS_PREFIX}.{name}"] = (
                    f"flag {name!r}: prerequisites[{i}]: "
                    + (f"flag {parent!r} is invalid" if parent in definitions else f"no flag named {parent!r}"))
                break
            wanted = wanted or frozenset({on_variants[parent]})
            unknown = sorted(wanted - set(target.variants))
            if unknown:
                problems[f"{FLAGS_PREFIX}.{name}"] = (f"flag {name!r}: prerequisites[{i}]: {unknown[0]!r} is not a "
                                                      f"variant of {parent!r}")
                break
            resolved.append((parent, wanted))
        else:
            flag.prerequisites = tuple(resolved)
            continue
        del flags[name]
    # Cycles: a -> b -> a never terminates at evaluation, so every flag on one is refused.
    for name in list(flags):
        chain = _cycle_from(name, flags)
        if chain:
            problems[f"{FLAGS_PREFIX}.{name}"] = f"flag {name!r}: prerequisites form a cycle: {' -> '.join(chain)}"
    for name in [n for n in flags if f"{FLAGS_PREFIX}.{n}" in problems]:
        del flags[name]
    # A flag whose prerequisite was refused is refused too (until nothing changes).
    changed = True
    while changed:
        changed = False
        for name, flag in list(flags.items()):
            for parent, _ in flag.prerequisites:
                if parent not in flags:
                    problems[f"{FLAGS_PREFIX}.{name}"] = f"flag {name!r}: prerequisite flag {parent!r} is invalid"
                    del flags[name]
                    changed = True
                    break


def _cycle_from(start: str, flags: Mapping[str, CompiledFlag]) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        flag = flags.get(node)
        if flag is None:
            continue
        for parent, _ in flag.prerequisites:
            if parent == start:
                return [*path, parent]
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*path, parent]))
    return None

