"""Exposures as events: who saw which variant, queried as a sequence with ``followed_by`` (real PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import esf
from esf import Event, Q
from esf.settings import FlagSettings, TelemetrySettings

EXPERIMENT = {"variants": {"A": "old", "B": "new"}, "off_variant": "A",
              "serve": {"rollout": [{"variant": "A", "weight": 50}, {"variant": "B", "weight": 50}]}}


def _foundation(pg_url, tmp_path, rate):
    return esf.Foundation(esf.Settings(database_url=pg_url, data_dir=str(tmp_path),
                                       telemetry=TelemetrySettings(enabled=False),
                                       flags=FlagSettings(exposure_sample_rate=rate)))


def test_users_who_saw_variant_b_and_then_ordered_are_found_with_followed_by(pg_url, tmp_path):
    # Given a 50/50 experiment with every exposure recorded
    fnd = _foundation(pg_url, tmp_path, 1.0)
    try:
        fnd.flags.set("checkout", EXPERIMENT)
        seen = {}
        # When 40 requests each evaluate it (twice) in their scope, and every third user orders
        for i in range(40):
            cid = f"req-{i}"
            with fnd.flags.scope({"key": f"user-{i}"}, correlation_id=cid):
                seen[cid] = fnd.flags.variant("checkout")
                assert fnd.flags.variant("checkout") == seen[cid]
            if i % 3 == 0:
                fnd.record(Event("order.placed", {"user": f"user-{i}"}, correlation_id=cid))
        assert fnd.flush(timeout=60)
        # Then "saw B, then ordered within an hour" is exactly the B users who ordered
        pairs = fnd.events.followed_by(Q.type("flag.exposure") & (Q.data("variant") == "B"),
                                       Q.type("order.placed"), within=timedelta(hours=1))
        want = {cid for cid, v in seen.items() if v == "B" and int(cid[4:]) % 3 == 0}
        assert want and {a.correlation_id for a, _ in pairs} == want
        # And each request recorded one exposure (flag, variant, key), not one per evaluation
        exposures = fnd.events.query(Q.type("flag.exposure"))
        assert len(exposures) == 40
        first = next(e for e in exposures if e.correlation_id == "req-0")
        assert dict(first.data) == {"flag": "checkout", "variant": seen["req-0"], "reason": "rollout",
                                    "key": "user-0"}
    finally:
        fnd.close()


def test_no_exposure_is_recorded_when_the_sample_rate_is_zero_and_errors_are_never_exposed(pg_url, tmp_path):
    # Given two processes on one database, exposures off (the default) in one and on in the other
    quiet = _foundation(pg_url, tmp_path / "a", 0.0)
    loud = _foundation(pg_url, tmp_path / "b", 1.0)
    try:
        quiet.flags.set("checkout", EXPERIMENT)
        loud.flags.set("checkout", EXPERIMENT)
        # When flags are evaluated: known flag with exposures off, unknown flag with exposures on
        for i in range(10):
            quiet.flags.variant("checkout", {"key": f"u{i}"})
            loud.flags.variant("missing", {"key": f"u{i}"})
        loud.flags.variant("checkout", {"key": "u1"})
        assert quiet.flush(timeout=60) and loud.flush(timeout=60)
        # Then only the one answered evaluation with exposures on was recorded
        exposures = loud.events.query(Q.type("flag.exposure"))
        assert [dict(e.data)["key"] for e in exposures] == ["u1"]
    finally:
        quiet.close()
        loud.close()


def test_through_the_openfeature_api_alone_exposures_and_tracked_events_pair_with_followed_by(pg_url, tmp_path):
    # Given an application using only the OpenFeature API over ESF, with exposures on
    import uuid

    from esf.plugins.openfeature import EsfProvider
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.track import TrackingEventDetails

    fnd = _foundation(pg_url, tmp_path, 1.0)
    domain = f"test-{uuid.uuid4().hex[:8]}"
    api.set_provider(EsfProvider(fnd.flags), domain)
    client = api.get_client(domain)
    try:
        fnd.flags.set("checkout", EXPERIMENT)
        variants = {}
        # When 20 requests evaluate the experiment and every other one tracks a purchase, each in its scope
        for i in range(20):
            ctx = EvaluationContext(f"user-{i}", {"plan": "pro"})
            with fnd.flags.scope({"key": f"user-{i}"}, correlation_id=f"req-{i}"):
                variants[f"req-{i}"] = client.get_string_details("checkout", "old", ctx).variant
                if i % 2 == 0:
                    client.track("order.placed", ctx, TrackingEventDetails(value=9.5, attributes={"sku": "x"}))
        assert fnd.flush(timeout=60)
        # Then followed_by pairs each B exposure with the purchase of the same request
        pairs = fnd.events.followed_by(Q.type("flag.exposure") & (Q.data("variant") == "B"),
                                       Q.type("order.placed"), within=timedelta(hours=1))
        want = {cid for cid, v in variants.items() if v == "B" and int(cid[4:]) % 2 == 0}
        assert want and {a.correlation_id for a, _ in pairs} == want
        order = pairs[0][1]
        assert dict(order.data) == {"key": order.correlation_id.replace("req", "user"), "value": 9.5, "sku": "x"}
        # And a tracking event name that is not an event type is refused at the call site
        with pytest.raises(esf.ValidationError):
            client.track("not a type!", EvaluationContext("user-1"))
    finally:
        api.clear_providers()
        fnd.close()
