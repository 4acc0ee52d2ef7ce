"""The OpenFeature provider, exercised through the ``openfeature-sdk`` client: it answers as ``fnd.flags`` does."""

from __future__ import annotations

import uuid

import pytest
from esf.plugins.openfeature import EsfProvider
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason


@pytest.fixture
def client(sqlite_config, make_flags):
    flags = make_flags(sqlite_config)
    domain = f"test-{uuid.uuid4().hex[:8]}"
    api.set_provider(EsfProvider(flags), domain)
    yield flags, api.get_client(domain)
    api.clear_providers()


def test_the_sdk_gets_the_same_values_variants_and_reasons_as_fnd_flags(client):
    # Given a boolean rollout with a rule, and a string experiment
    flags, of = client
    flags.set("checkout", {"rules": [{"if": {"attr": "country", "op": "eq", "value": "FR"},
                                      "serve": {"variant": "on"}}], "serve": {"percentage": 40}})
    flags.set("layout", {"variants": {"a": "list", "b": "grid"}, "off_variant": "a", "targets": {"b": ["vip"]},
                         "serve": {"rollout": [{"variant": "a", "weight": 50}, {"variant": "b", "weight": 50}]}})
    want_reason = {"rule_match": Reason.TARGETING_MATCH, "target_match": Reason.TARGETING_MATCH,
                   "rollout": Reason.SPLIT, "default": Reason.DEFAULT}
    # When 300 contexts are evaluated through the OpenFeature client and through fnd.flags
    for i in range(300):
        attrs = {"country": "FR" if i % 5 == 0 else "DE"}
        key = "vip" if i == 7 else f"user-{i}"
        for name, get, default in (("checkout", of.get_boolean_details, False),
                                   ("layout", of.get_string_details, "none")):
            details = get(name, default, EvaluationContext(key, attrs))
            answer = flags.evaluate(name, {"key": key, **attrs})
            # Then the value, variant and reason agree, with ESF's own reason in the metadata
            assert (details.value, details.variant) == (answer.value, answer.variant)
            assert details.reason == want_reason[answer.reason]
            assert details.flag_metadata["reason"] == answer.reason and details.error_code is None
    assert of.get_string_details("layout", "none", EvaluationContext("vip", {})).value == "grid"


def test_the_sdk_gets_the_callers_default_with_the_openfeature_error_code(client):
    # Given a boolean flag needing an attribute, a string flag, numbers and an object
    flags, of = client
    flags.set("checkout", {"rules": [{"if": {"attr": "age", "op": "gte", "value": 18},
                                      "serve": {"variant": "on"}}], "serve": {"variant": "off"}})
    flags.set("label", {"variants": {"on": "new", "off": "old"}})
    flags.set("limits", {"variants": {"on": 10, "off": 0}})
    flags.set("ratio", {"variants": {"on": 2.5, "off": 0.0}})
    flags.set("theme", {"variants": {"on": {"color": "blue", "sizes": [1, 2]}, "off": {}}})
    ctx = EvaluationContext("u1", {"age": 30})
    # Then typed values come back typed, and each failure gives the default and its code
    assert of.get_integer_value("limits", 0, ctx) == 10
    assert of.get_float_value("ratio", 0.0, ctx) == 2.5 and of.get_float_value("limits", 0.0, ctx) == 10.0
    assert of.get_object_value("theme", {}, ctx) == {"color": "blue", "sizes": [1, 2]}
    missing = of.get_boolean_details("nope", True, ctx)
    assert (missing.value, missing.error_code, missing.reason) == (True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)
    wrong_type = of.get_boolean_details("label", False, ctx)
    assert (wrong_type.value, wrong_type.error_code) == (False, ErrorCode.TYPE_MISMATCH)
    no_age = of.get_boolean_details("checkout", True, EvaluationContext("u1", {}))
    assert (no_age.value, no_age.error_code) == (True, ErrorCode.GENERAL) and "age" in no_age.error_message
    assert of.get_integer_details("ratio", 3, ctx).error_code == ErrorCode.TYPE_MISMATCH
    # And the errors are counted like fnd.flags's own
    assert flags.errors["nope"] == 1 and flags.errors["checkout"] == 1


def test_a_flag_change_reaches_sdk_handlers_as_a_configuration_changed_event(client, sqlite_config):
    # Given an SDK handler of provider configuration changes, and two flags
    from openfeature.event import ProviderEvent

    flags, of = client
    events = []
    of.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, lambda details: events.append(details.flags_changed))
    flags.set("a", {})
    flags.set("b", {})
    # When one flag is killed, then a batch changes both
    flags.kill("a")
    sqlite_config.update_batch({"flags.a.enabled": False, "flags.b.enabled": False})
    # Then each change is one event naming the flags it changed
    assert events == [["a"], ["b"], ["a"], ["a", "b"]]
    # And after the provider shuts down, changes no longer emit
    api.clear_providers()
    flags.enable("a")
    assert len(events) == 4
