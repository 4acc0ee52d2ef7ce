"""Every operator and every combination, against a reference evaluator written here (property tests)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esf.flags._model import compile_all

# -- the reference evaluator (independent of esf.flags) ---------------------------------------------


class Missing(Exception):
    """A reached condition needs an attribute the context lacks, or of another type: the answer is an error."""


def ref_semver(text):
    """Semantic-version precedence, written plainly: core numbers, then a release above its pre-releases."""
    text = text[1:] if text.startswith("v") else text
    text = text.split("+", 1)[0]
    core, _, pre = text.partition("-")
    parts = core.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise Missing("not semver")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    if not pre:
        return (nums, 1, [])
    ids = []
    for p in pre.split("."):
        ids.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return (nums, 0, ids)


def ref_value(ctx, attr):
    if attr not in ctx:
        raise Missing(attr)
    return ctx[attr]


def ref_kind(value, kind):
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Missing("not a number")
        return value
    if kind == "semver":
        if not isinstance(value, str):
            raise Missing("not a string")
        return ref_semver(value)
    if not isinstance(value, str):
        raise Missing("not a date")
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def same(a, b):
    """JSON equality: true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) != isinstance(b, str):
        return False
    return a == b


def ref(cond, ctx, segments):
    if "all" in cond:
        return all(ref(c, ctx, segments) for c in cond["all"])
    if "any" in cond:
        return any(ref(c, ctx, segments) for c in cond["any"])
    if "not" in cond:
        return not ref(cond["not"], ctx, segments)
    if "segment" in cond:
        return ref(segments[cond["segment"]]["if"], ctx, segments)
    attr, op, value = cond["attr"], cond["op"], cond.get("value")
    if op == "exists":
        return attr in ctx
    x = ref_value(ctx, attr)
    if op in ("eq", "neq") and "as" not in cond:
        return same(x, value) == (op == "eq")
    if op in ("in", "not_in"):
        return any(same(x, v) for v in value) == (op == "in")
    if op == "starts_with":
        if not isinstance(x, str):
            raise Missing("not a string")
        return any(x.startswith(p) for p in ([value] if isinstance(value, str) else value))
    if op == "regex":
        if not isinstance(x, str):
            raise Missing("not a string")
        return re.search(value, x) is not None
    kind = cond.get("as", "number")
    a, b = ref_kind(x, kind), ref_kind(value, kind)
    return {"eq": a == b, "neq": a != b, "lt": a < b, "lte": a <= b, "gt": a > b, "gte": a >= b}[op]


# -- generators ---------------------------------------------------------------------------------

WORDS = ["alpha", "beta", "b", "al", "x1", "", "Beta"]
SCALARS = st.one_of(st.sampled_from(WORDS), st.integers(-3, 3), st.sampled_from([1.0, 2.5, -0.5]), st.booleans(),
                    st.none())
VERSIONS = st.builds(
    lambda a, b, c, pre, short: (f"{a}.{b}" if short else f"{a}.{b}.{c}") + (f"-{pre}" if pre else ""),
    st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
    st.sampled_from([None, "alpha", "alpha.1", "beta", "rc.2", "1", "2"]), st.booleans())
BASE = datetime(2026, 1, 1, tzinfo=UTC)
DATES = st.builds(lambda d, h, naive: (BASE + timedelta(days=d, hours=h)).replace(tzinfo=None if naive else UTC)
                  .isoformat(), st.integers(-3, 3), st.integers(0, 23), st.booleans())
REGEXES = ["^a", "ta$", "[0-9]", "^$", "e.a"]


def attribute_condition():
    plain = st.builds(lambda op, v: {"attr": "s", "op": op, "value": v}, st.sampled_from(["eq", "neq"]), SCALARS)
    member = st.builds(lambda op, vs: {"attr": "s", "op": op, "value": vs}, st.sampled_from(["in", "not_in"]),
                       st.lists(SCALARS, min_size=1, max_size=4))
    number = st.builds(lambda op, v: {"attr": "n", "op": op, "value": v},
                       st.sampled_from(["lt", "lte", "gt", "gte"]), st.integers(-3, 3) | st.sampled_from([0.5, 2.5]))
    semver = st.builds(lambda op, v: {"attr": "v", "op": op, "value": v, "as": "semver"},
                       st.sampled_from(["lt", "lte", "gt", "gte", "eq", "neq"]), VERSIONS)
    date = st.builds(lambda op, v: {"attr": "d", "op": op, "value": v, "as": "date"},
                     st.sampled_from(["lt", "lte", "gt", "gte", "eq", "neq"]), DATES)
    prefix = st.builds(lambda v: {"attr": "s", "op": "starts_with", "value": v},
                       st.sampled_from(WORDS[:5]) | st.lists(st.sampled_from(WORDS[:5]), min_size=1, max_size=3))
    regex = st.builds(lambda v: {"attr": "s", "op": "regex", "value": v}, st.sampled_from(REGEXES))
    exists = st.builds(lambda a: {"attr": a, "op": "exists"}, st.sampled_from(["s", "n", "v", "d", "zz"]))
    segment = st.just({"segment": "seg"})
    return st.one_of(plain, member, number, semver, date, prefix, regex, exists, segment)


CONDITIONS = st.recursive(
    attribute_condition(),
    lambda inner: st.one_of(st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda c: {"not": c}, inner)),
    max_leaves=6)


@st.composite
def contexts(draw):
    ctx = {"key": "k"}
    for attr, values in (("s", SCALARS), ("n", st.integers(-4, 4) | st.sampled_from([0.5, 2.5, True, "3"])),
                         ("v", VERSIONS | st.sampled_from(["bad", 3])), ("d", DATES | st.sampled_from([7]))):
        if draw(st.integers(0, 4)):  # mostly present, sometimes missing
            ctx[attr] = draw(values)
    return ctx


SEGMENT = {"if": {"any": [{"attr": "s", "op": "in", "value": ["alpha", "b"]},
                          {"attr": "n", "op": "gt", "value": 2}]}}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cond=CONDITIONS, ctxs=st.lists(contexts(), min_size=1, max_size=6))
def test_every_operator_and_combination_agrees_with_the_reference_evaluator(cond, ctxs):
    # Given a flag serving "on" when the generated condition holds, "off" otherwise
    compiled = compile_all({"f": {"rules": [{"if": cond, "serve": {"variant": "on"}}], "serve": {"variant": "off"}}},
                           {"seg": SEGMENT})
    assert compiled.problems == {}, compiled.problems
    flag = compiled.flags["f"]
    for ctx in ctxs:
        # When it is evaluated
        try:
            expected = "on" if ref(cond, ctx, {"seg": SEGMENT}) else "off"
        except Missing:
            expected = "error"
        try:
            got = flag.evaluate(ctx, compiled.flags).variant
        except Exception as exc:
            got = "error" if type(exc).__name__ == "EvaluationFailed" else repr(exc)
        # Then the answer is the reference's (an unanswerable context is an error in both)
        assert got == expected, (cond, ctx)


@settings(max_examples=200, deadline=None)
@given(a=VERSIONS, b=VERSIONS)
def test_semantic_versions_order_as_the_reference_orders_them(a, b):
    from esf.flags import parse_semver

    ka, kb = ref_semver(a), ref_semver(b)
    assert (parse_semver(a) < parse_semver(b)) == (ka < kb)
    assert (parse_semver(a) == parse_semver(b)) == (ka == kb)


def test_semantic_version_precedence_follows_the_specification_example():
    # Given the precedence example of semver.org 2.0.0, section 11
    from esf.flags import parse_semver

    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1", "2.0.0+build.7"]
    # Then parse_semver sorts it in that order
    assert sorted(ordered, key=parse_semver) == ordered


BOUNDS = (("number", 2, [1, 2, 2.0, 2.5, 3]),
          ("semver", "1.2.0", ["1.1.9", "1.2.0", "1.2", "v1.2.0", "1.2.0-rc.1", "1.2.0+build.5", "1.10.0"]),
          ("date", "2026-01-02T00:00:00+00:00", ["2026-01-01T23:59:59+00:00", "2026-01-02T00:00:00+00:00",
                                                 "2026-01-02T00:00:00", "2026-01-02T01:00:00+01:00",
                                                 "2026-01-02T00:00:01+00:00"]))


def test_each_comparison_below_at_and_above_its_bound_agrees_with_the_reference_evaluator():
    # Given every ordered operator on numbers, semantic versions and dates, at a fixed bound
    for op in ("lt", "lte", "gt", "gte", "eq", "neq"):
        for kind, bound, values in BOUNDS:
            cond = {"attr": "x", "op": op, "value": bound, **({} if kind == "number" else {"as": kind})}
            compiled = compile_all({"f": {"rules": [{"if": cond, "serve": {"variant": "on"}}],
                                          "serve": {"variant": "off"}}}, {})
            assert compiled.problems == {}, compiled.problems
            # When values below, equal to (in other spellings) and above the bound are evaluated
            for value in values:
                ctx = {"key": "k", "x": value}
                expected = "on" if ref(cond, ctx, {}) else "off"
                # Then each answer is the reference's (equality is where a wrong operator shows)
                assert compiled.flags["f"].evaluate(ctx, compiled.flags).variant == expected, (cond, value)
