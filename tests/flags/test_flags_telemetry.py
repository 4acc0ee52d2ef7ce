"""Evaluations counted by flag, variant and reason in ESF's telemetry."""

from __future__ import annotations

import esf


def test_every_evaluation_is_counted_by_flag_variant_and_reason(tmp_path):
    # Given a Foundation with telemetry on and a flag with a rule
    fnd = esf.Foundation(esf.Settings(data_dir=str(tmp_path)))
    try:
        fnd.flags.set("beta", {"rules": [{"if": {"attr": "plan", "op": "eq", "value": "pro"},
                                          "serve": {"variant": "on"}}], "serve": {"variant": "off"}})
        # When it is evaluated 3 times for pro users, twice for free users, once without the attribute,
        # and an unknown flag once
        for _ in range(3):
            fnd.flags.enabled("beta", {"key": "u", "plan": "pro"})
        for _ in range(2):
            fnd.flags.enabled("beta", {"key": "u", "plan": "free"})
        fnd.flags.enabled("beta", {"key": "u"})
        fnd.flags.enabled("ghost", {"key": "u"})
        # And the flag changes (new compiled answers) and is evaluated once more
        fnd.flags.disable("beta")
        fnd.flags.enabled("beta", {"key": "u", "plan": "pro"})
        # Then the counter has one series per flag, variant and reason, with exact counts
        series = fnd.telemetry.snapshot(cluster=False)["metrics"]["esf.flags.evaluations"]["series"]
        got = {(s["labels"]["flag"], s["labels"]["variant"], s["labels"]["reason"]): s["value"] for s in series}
        assert got == {("beta", "on", "rule_match"): 3, ("beta", "off", "default"): 2, ("beta", "", "error"): 1,
                       ("ghost", "", "error"): 1, ("beta", "off", "disabled"): 1}
        # And the Foundation's health reports the flag service
        flags_health = fnd.health()["services"]["flags"]
        assert flags_health == {"status": "ok", "flags": 1, "invalid": [], "errors": 2}
    finally:
        fnd.close()
