"""What a rule or the fallthrough serves: a fixed variant, or a weighted rollout sticky by a hash of salt and key."""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from ._conditions import DefinitionError, EvaluationFailed
from ._values import BUCKETS, REASON_ROLLOUT, Evaluation

__all__ = ["Serve", "compile_serve", "sticky_attribute"]

_sha1 = hashlib.sha1


def _key_of(ctx: Mapping[str, Any], by: str) -> str:
    try:
        key = ctx[by]
    except KeyError:
        raise EvaluationFailed(f"attribute {by!r} (the rollout key) is missing from the context") from None
    if type(key) is str:
        return key
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    raise EvaluationFailed(f"attribute {by!r} (the rollout key) is a {type(key).__name__}, not a string")


class Serve:
    """A fixed variant, or a weighted rollout over variants sticky by a hash of salt and key."""

    __slots__ = ("answers", "by", "fixed", "salt", "thresholds")

    def __init__(self, fixed: Evaluation | None, thresholds: tuple[int, ...], answers: tuple[Evaluation, ...],
                 by: str, salt: str) -> None:
        self.fixed = fixed
        self.thresholds = thresholds
        self.answers = answers
        self.by = by
        self.salt = salt

    def pick(self, ctx: Mapping[str, Any]) -> Evaluation:
        if self.fixed is not None:
            return self.fixed
        # bucket() inlined (the hot path of every rollout): the same hash of salt and key.
        key = ctx[self.by]
        if type(key) is not str:
            key = _key_of(ctx, self.by)
        b = int.from_bytes(_sha1(f"{self.salt}:{key}".encode(), usedforsecurity=False).digest()[:8], "big") % BUCKETS
        return self.answers[bisect_right(self.thresholds, b)]


def sticky_attribute(definition: Mapping[str, Any]) -> str:
    by = definition.get("by", "key")
    if not isinstance(by, str) or not by:
        raise DefinitionError("by", "must be a non-empty attribute name")
    return by


def compile_serve(spec: Any, where: str, name: str, by: str, on: str, off: str, answer: Any, fixed_reason: str,
           rule: int | None) -> Serve:
    """``{"variant": V}``, ``{"percentage": P}`` (on for P %, else off) or ``{"rollout": [{variant, weight}…]}``;
    a rollout takes optional ``by`` (the sticky attribute) and ``salt`` (default: the flag name)."""
    if not isinstance(spec, Mapping):
        raise DefinitionError(where, "serve is an object: {variant}, {percentage} or {rollout}")
    forms = [k for k in ("variant", "percentage", "rollout") if k in spec]
    if len(forms) != 1:
        raise DefinitionError(where, "serve has exactly one of variant, percentage, rollout")
    form = forms[0]
    if form == "variant":
        if set(spec) != {"variant"}:
            raise DefinitionError(where, "serve {variant} takes no other key")
        v = spec["variant"]
        if not isinstance(v, str) or answer is None:
            raise DefinitionError(f"{where}.variant", "must be a variant name")
        try:
            fixed = answer(v, fixed_reason, rule)
        except KeyError:
            raise DefinitionError(f"{where}.variant", f"{v!r} is not a variant") from None
        return Serve(fixed, (), (), by, name)
    extra = set(spec) - {form, "by", "salt"}
    if extra:
        raise DefinitionError(where, f"unknown key {sorted(extra)[0]!r}")
    sticky = sticky_attribute({"by": spec.get("by", by)})
    salt = spec.get("salt", name)
    if not isinstance(salt, str):
        raise DefinitionError(f"{where}.salt", "must be a string")
    if form == "percentage":
        pct = spec["percentage"]
        weights = [(on, pct), (off, 100 - pct)] if _is_number(pct) and on != off else None
        if weights is None:
            raise DefinitionError(f"{where}.percentage", "must be a number from 0 to 100 (on and off differ)")
    else:
        items = spec["rollout"]
        if not isinstance(items, list | tuple) or not items:
            raise DefinitionError(f"{where}.rollout", "must be a non-empty list of {variant, weight}")
        weights = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or set(item) != {"variant", "weight"}:
                raise DefinitionError(f"{where}.rollout[{i}]", "must be {\"variant\": NAME, \"weight\": PERCENT}")
            weights.append((item["variant"], item["weight"]))
    thresholds: list[int] = []
    answers: list[Evaluation] = []
    total = 0
    seen: set[str] = set()
    for i, (v, w) in enumerate(weights):
        if not _is_number(w) or not 0 <= w <= 100:
            raise DefinitionError(f"{where}.{form}", f"weight {w!r} is not a percentage from 0 to 100")
        buckets = round(w * BUCKETS / 100)
        if not math.isclose(buckets, w * BUCKETS / 100, abs_tol=1e-6):
            raise DefinitionError(f"{where}.{form}", f"weight {w!r} has more than two decimals")
        if not isinstance(v, str) or v in seen:
            raise DefinitionError(f"{where}.{form}[{i}]", f"{v!r} is not a variant, or is listed twice")
        seen.add(v)
        try:
            ans = answer(v, REASON_ROLLOUT, rule)
        except KeyError:
            raise DefinitionError(f"{where}.{form}[{i}]", f"{v!r} is not a variant") from None
        total += buckets
        thresholds.append(total)
        answers.append(ans)
    if total != BUCKETS:
        raise DefinitionError(f"{where}.{form}", f"weights add up to {total / 100:g} %, not 100 %")
    return Serve(None, tuple(thresholds), tuple(answers), sticky, salt)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
