"""Flags evaluated from a real configuration store: rollouts, targets, segments, prerequisites, kill switch,
validation on write, and answers that never break the caller."""

from __future__ import annotations

import collections

import pytest

from esf.config import DELETE
from esf.errors import NotFound, ValidationError


def test_a_key_in_a_rollout_stays_in_when_the_rollout_grows(sqlite_config, make_flags):
    # Given a flag rolled out to 10 % of 5,000 keys
    flags = make_flags(sqlite_config)
    keys = [f"user-{i}" for i in range(5000)]
    flags.set("checkout", {"serve": {"percentage": 10}})
    ins = {k for k in keys if flags.enabled("checkout", {"key": k})}
    # When it grows to 20 %, then 50 %
    flags.set("checkout", {"serve": {"percentage": 20}})
    at_20 = {k for k in keys if flags.enabled("checkout", {"key": k})}
    flags.set("checkout", {"serve": {"percentage": 50}})
    at_50 = {k for k in keys if flags.enabled("checkout", {"key": k})}
    # Then every key that was in stays in, and the shares are close to the percentages
    assert ins <= at_20 <= at_50
    assert 400 < len(ins) < 600 and 850 < len(at_20) < 1150 and 2300 < len(at_50) < 2700
    # And every evaluation says it came from the rollout
    assert flags.evaluate("checkout", {"key": "user-1"}).reason == "rollout"


def test_100000_keys_split_within_one_percent_of_each_weight(sqlite_config, make_flags):
    # Given a three-variant experiment weighted 20 / 30.5 / 49.5
    flags = make_flags(sqlite_config)
    flags.set("layout", {
        "variants": {"control": "list", "grid": "grid", "cards": "cards"},
        "off_variant": "control",
        "serve": {"rollout": [{"variant": "control", "weight": 20}, {"variant": "grid", "weight": 30.5},
                              {"variant": "cards", "weight": 49.5}]},
    })
    # When 100,000 keys are evaluated
    counts = collections.Counter(flags.variant("layout", {"key": f"k{i}"}) for i in range(100_000))
    # Then each variant's share is within 1 percentage point of its weight, and values follow variants
    assert abs(counts["control"] / 1000 - 20) < 1
    assert abs(counts["grid"] / 1000 - 30.5) < 1
    assert abs(counts["cards"] / 1000 - 49.5) < 1
    assert flags.evaluate("layout", {"key": "k1"}).value in ("list", "grid", "cards")


def test_a_salt_makes_two_flags_split_the_same_keys_independently(sqlite_config, make_flags):
    # Given two 50 % flags, one with its own salt
    flags = make_flags(sqlite_config)
    flags.set("a", {"serve": {"percentage": 50}})
    flags.set("b", {"serve": {"percentage": 50, "salt": "experiment-7"}})
    # When 4,000 keys are evaluated on both
    both = sum(flags.enabled("a", {"key": f"k{i}"}) and flags.enabled("b", {"key": f"k{i}"}) for i in range(4000))
    # Then about a quarter are in both (independent), not half (the same keys)
    assert 800 < both < 1200


def test_deny_beats_allow_and_targets_beat_rules(sqlite_config, make_flags):
    # Given a flag that is off by default, on for a rule, with allow, deny and per-variant targets
    flags = make_flags(sqlite_config)
    flags.set("beta", {
        "variants": {"on": True, "off": False, "staff": True},
        "allow": ["alice", "mallory"], "deny": ["mallory"], "targets": {"staff": ["sam"]},
        "rules": [{"if": {"attr": "plan", "op": "eq", "value": "pro"}, "serve": {"variant": "on"}}],
        "serve": {"variant": "off"},
    })
    # Then each context gets the answer of the first step that decides it
    alice = flags.evaluate("beta", {"key": "alice"})
    mallory = flags.evaluate("beta", {"key": "mallory", "plan": "pro"})
    sam = flags.evaluate("beta", {"key": "sam"})
    pro = flags.evaluate("beta", {"key": "bob", "plan": "pro"})
    free = flags.evaluate("beta", {"key": "carol", "plan": "free"})
    assert (alice.variant, alice.reason) == ("on", "target_match")
    assert (mallory.variant, mallory.reason) == ("off", "target_match")
    assert (sam.variant, sam.reason) == ("staff", "target_match")
    assert (pro.variant, pro.reason, pro.rule) == ("on", "rule_match", 0)
    assert (free.variant, free.reason) == ("off", "default")


def test_the_kill_switch_overrides_everything_until_the_flag_is_enabled_again(config, make_flags):
    # Given a flag on for everyone, with an allow list
    flags = make_flags(config)
    flags.set("payments", {"allow": ["vip"]})
    assert flags.enabled("payments", {"key": "vip"})
    # When its kill switch is pulled
    flags.kill("payments")
    # Then everyone, the allow-listed key included, gets the off variant with reason kill_switch
    answer = flags.evaluate("payments", {"key": "vip"})
    assert (answer.value, answer.reason) == (False, "kill_switch")
    # And disabling is a different reason; enabling releases both
    flags.disable("payments")
    assert flags.evaluate("payments", {"key": "x"}).reason == "kill_switch"
    flags.enable("payments")
    assert flags.evaluate("payments", {"key": "x"}).reason == "default"
    flags.disable("payments")
    assert flags.evaluate("payments", {"key": "x"}).reason == "disabled"


def test_segments_are_defined_once_and_used_by_many_flags(sqlite_config, make_flags):
    # Given a segment (rule + include + exclude) built on another segment, used by two flags
    flags = make_flags(sqlite_config)
    flags.set_segment("europe", {"if": {"attr": "country", "op": "in", "value": ["FR", "DE", "IT"]}})
    flags.set_segment("beta_testers", {
        "if": {"all": [{"segment": "europe"}, {"attr": "age", "op": "gte", "value": 18}]},
        "include": ["tester-1"], "exclude": ["banned"],
    })
    for name in ("search_v2", "dark_mode"):
        flags.set(name, {"rules": [{"if": {"segment": "beta_testers"}, "serve": {"variant": "on"}}],
                         "serve": {"variant": "off"}})
    # Then membership follows the segment for both flags
    for name in ("search_v2", "dark_mode"):
        assert flags.enabled(name, {"key": "a", "country": "FR", "age": 30})
        assert not flags.enabled(name, {"key": "b", "country": "US", "age": 30})
        assert not flags.enabled(name, {"key": "c", "country": "FR", "age": 12})
        assert flags.enabled(name, {"key": "tester-1", "country": "US", "age": 12})
        assert not flags.enabled(name, {"key": "banned", "country": "FR", "age": 30})
    # When the segment changes once
    flags.set_segment("europe", {"if": {"attr": "country", "op": "in", "value": ["US"]}})
    # Then both flags follow
    assert flags.enabled("search_v2", {"key": "b", "country": "US", "age": 30})
    assert flags.enabled("dark_mode", {"key": "b", "country": "US", "age": 30})


def test_a_flag_with_a_prerequisite_is_on_only_when_its_prerequisite_serves_the_wanted_variant(sqlite_config,
                                                                                                  make_flags):
    # Given flag B on only when A is on, and C only when the experiment serves "grid"
    flags = make_flags(sqlite_config)
    flags.set("a", {"allow": ["in"], "serve": {"variant": "off"}})
    flags.set("b", {"prerequisites": ["a"]})
    flags.set("exp", {"variants": {"list": 1, "grid": 2}, "targets": {"grid": ["in"]}, "serve": {"variant": "list"}})
    flags.set("c", {"prerequisites": [{"flag": "exp", "variants": ["grid"]}]})
    # Then B and C follow their prerequisites
    assert flags.evaluate("b", {"key": "in"}).reason == "default"
    out = flags.evaluate("b", {"key": "out"})
    assert (out.value, out.reason) == (False, "prerequisite_failed")
    assert flags.enabled("c", {"key": "in"}) and not flags.enabled("c", {"key": "out"})
    # When A is killed, B is off for everyone
    flags.kill("a")
    assert flags.evaluate("b", {"key": "in"}).reason == "prerequisite_failed"


@pytest.mark.parametrize(("definition", "named"), [
    ({"rules": [{"if": {"attr": "x", "op": "between", "value": 1}, "serve": {"variant": "on"}}]}, "rules[0].if.op"),
    ({"rules": [{"if": {"attr": "v", "op": "gte", "value": "1.x", "as": "semver"}, "serve": {"variant": "on"}}]},
     "rules[0].if.value"),
    ({"rules": [{"if": {"attr": "d", "op": "lt", "value": "yesterday", "as": "date"}, "serve": {"variant": "on"}}]},
     "rules[0].if.value"),
    ({"rules": [{"if": {"attr": "e", "op": "regex", "value": "(unclosed"}, "serve": {"variant": "on"}}]},
     "rules[0].if.value"),
    ({"rules": [{"if": {"any": [{"attr": "a", "op": "exists"}, {"segment": "nope"}]}, "serve": {"variant": "on"}}]},
     "rules[0].if.any[1].segment"),
    ({"rules": [{"if": {"attr": "a", "op": "exists"}, "serve": {"variant": "maybe"}}]}, "rules[0].serve.variant"),
    ({"serve": {"rollout": [{"variant": "on", "weight": 60}, {"variant": "off", "weight": 30}]}}, "serve.rollout"),
    ({"serve": {"rollout": [{"variant": "on", "weight": 50.001}, {"variant": "off", "weight": 49.999}]}},
     "serve.rollout"),
    ({"serve": {"percentage": 120}}, "serve.percentage"),
    ({"prerequisites": ["missing"]}, "prerequisites[0]"),
    ({"prerequisites": ["payments"]}, "prerequisites"),
    ({"enabeld": True}, "enabeld"),
    ({"variants": {}}, "variants"),
    ({"in": ["x"], "rules": []}, "in"),
])
def test_an_invalid_definition_is_refused_when_written_with_the_rule_named_and_nothing_written(
        config, make_flags, definition, named):
    # Given a store at some version
    flags = make_flags(config)
    before = config.version
    # When an invalid definition is written
    with pytest.raises(ValidationError) as info:
        flags.set("payments", definition)
    # Then the error names the flag and the rule, and nothing was written
    assert "flags.payments" in info.value.errors
    assert named in str(info.value)
    assert config.version == before
    assert flags.names() == []


def test_changes_that_would_break_another_flag_are_refused(sqlite_config, make_flags):
    # Given a flag using a segment and another flag as a prerequisite
    flags = make_flags(sqlite_config)
    flags.set_segment("staff", {"include": ["sam"]})
    flags.set("a", {})
    flags.set("b", {"prerequisites": ["a"], "rules": [{"if": {"segment": "staff"}, "serve": {"variant": "on"}}]})
    version = sqlite_config.version
    # When the segment or the prerequisite is deleted, or a cycle is introduced, through any path
    with pytest.raises(ValidationError) as seg:
        sqlite_config.update("flag_segments.staff", DELETE)
    with pytest.raises(ValidationError):
        flags.delete("a")
    with pytest.raises(ValidationError) as cycle:
        sqlite_config.update("flags.a.prerequisites", ["b"])
    with pytest.raises(ValidationError):
        sqlite_config.update_batch({"flags.a.rules": [{"if": {"attr": "x", "op": "nope"}, "serve": {"variant": "on"}}],
                                    "other.setting": 1})
    # Then each is refused naming the flag it would break, and nothing was written
    assert "flags.b" in seg.value.errors
    assert "cycle" in str(cycle.value)
    assert sqlite_config.version == version
    assert sqlite_config.get("other.setting", default=None) is None
    # And once nothing uses them they can go; deleting a flag that is not there is NotFound
    flags.delete("b")
    flags.delete("a")
    sqlite_config.update("flag_segments.staff", DELETE)
    with pytest.raises(NotFound):
        flags.delete("a")


def test_an_unknown_flag_a_missing_attribute_or_a_bad_context_returns_the_default_with_reason_error(
        sqlite_config, make_flags):
    # Given a flag with a rule on an attribute and a rollout on the key
    flags = make_flags(sqlite_config)
    flags.set("f", {"rules": [{"if": {"attr": "version", "op": "gte", "value": "2.0.0", "as": "semver"},
                               "serve": {"variant": "off"}}], "serve": {"percentage": 100}})
    flags.set("text", {"variants": {"on": "yes", "off": "no"}})
    # When it is evaluated in ways that cannot be answered
    cases = {
        "unknown flag": flags.evaluate("missing", {"key": "u"}, default="D"),
        "missing attribute": flags.evaluate("f", {"key": "u"}, default="D"),
        "unparsable attribute": flags.evaluate("f", {"key": "u", "version": "two"}, default="D"),
        "no key for the rollout": flags.evaluate("f", {"version": "1.0.0"}, default="D"),
        "a list as context": flags.evaluate("f", ["key", "u"], default="D"),  # type: ignore[arg-type]
    }
    # Then each returns the caller's default with reason error, the problem named, and is counted
    for what, answer in cases.items():
        assert (answer.value, answer.variant, answer.reason) == ("D", None, "error"), what
        assert answer.error
    assert flags.errors["f"] == 4 and flags.errors["missing"] == 1
    # And enabled() of a flag whose value is not a boolean returns the default, counted
    assert flags.enabled("text", {"key": "u"}, default=True) is True
    assert flags.errors["text"] == 1
    assert flags.variant("missing", {"key": "u"}, default="fallback") == "fallback"
    # And a context that answers normally is not an error
    assert flags.evaluate("f", {"key": "u", "version": "1.9.9"}).reason == "rollout"


def test_a_definition_that_reached_the_store_without_validation_evaluates_to_the_default(tmp_path, make_flags):
    # Given a store written by a service without the flag validator (an older process)
    from esf.plugins.sqlite_config import SqliteConfigStore

    from esf.config import ConfigService

    from .conftest import FAST, flag_config

    path = str(tmp_path / "c.sqlite")
    plain = ConfigService(SqliteConfigStore(path), settings=FAST, data_dir=tmp_path / "p")
    plain.update("flags.broken", {"rules": [{"if": {"attr": "a", "op": "??"}, "serve": {"variant": "on"}}]})
    plain.close()
    config = flag_config(SqliteConfigStore(path), tmp_path / "q")
    try:
        flags = make_flags(config)
        # When the flag is evaluated
        answer = flags.evaluate("broken", {"key": "u"}, default="D")
        # Then the caller gets its default, and health names the bad definition
        assert (answer.value, answer.reason) == ("D", "error") and "invalid definition" in answer.error
        assert flags.health()["status"] == "degraded" and flags.health()["invalid"] == ["flags.broken"]
        # And an unrelated flag can still be written
        flags.set("fine", {})
        assert flags.enabled("fine", {"key": "u"})
    finally:
        config.close()


def test_a_rollback_to_a_version_with_an_invalid_flag_is_refused(tmp_path, make_flags):
    # Given version 1 written without the flag validator (an older process) holding an invalid flag,
    # and version 2 without it
    from esf.plugins.sqlite_config import SqliteConfigStore

    from esf.config import ConfigService

    from .conftest import FAST, flag_config

    path = str(tmp_path / "c.sqlite")
    plain = ConfigService(SqliteConfigStore(path), settings=FAST, data_dir=tmp_path / "p")
    bad = plain.update("flags.broken", {"serve": {"percentage": 101}})
    plain.update("flags.broken", DELETE)
    plain.close()
    config = flag_config(SqliteConfigStore(path), tmp_path / "q")
    try:
        version = config.version
        # When a validating process rolls back to version 1
        with pytest.raises(ValidationError) as info:
            config.rollback(bad)
        # Then the rollback is refused naming the flag, and nothing was written
        assert "flags.broken" in info.value.errors and "serve.percentage" in str(info.value)
        assert config.version == version
    finally:
        config.close()


def test_rollout_variants_follow_the_documented_bucket_of_salt_and_key(sqlite_config, make_flags):
    # Given a 3-variant rollout with its own salt, on an integer attribute as the key
    from esf.flags import bucket

    flags = make_flags(sqlite_config)
    flags.set("exp", {"variants": {"a": 1, "b": 2, "c": 3}, "off_variant": "a",
                      "serve": {"rollout": [{"variant": "a", "weight": 10.5}, {"variant": "b", "weight": 0},
                                            {"variant": "c", "weight": 89.5}], "by": "account", "salt": "s1"}})
    # Then each key's variant is the one whose range holds bucket("s1", key): a < 1050 <= c (b has none)
    for account in range(2000):
        want = "a" if bucket("s1", str(account)) < 1050 else "c"
        assert flags.variant("exp", {"key": "ignored", "account": account}) == want


def test_a_change_elsewhere_in_the_configuration_does_not_recompile_the_flags(sqlite_config, make_flags):
    # Given a compiled flag
    flags = make_flags(sqlite_config)
    flags.set("a", {"serve": {"percentage": 50}})
    before = flags.compiled("a")
    # When an unrelated path changes (a new configuration version)
    sqlite_config.update("billing.retries", 3)
    # Then the same compiled flag serves the new version; a flag change compiles again
    assert flags.compiled("a") is before
    flags.set("a", {"serve": {"percentage": 60}})
    assert flags.compiled("a") is not before
