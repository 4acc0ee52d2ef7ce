"""Histogram buckets: quantiles within the documented error, exact merges, run-time changes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from esf.errors import ValidationError
from esf.telemetry import ExplicitBuckets, ExponentialBuckets, Telemetry, parse_buckets
from esf.telemetry._buckets import quantiles


@pytest.mark.parametrize(
    "dist",
    [
        lambda r: r.lognormvariate(-3, 1.5),
        lambda r: r.expovariate(10),
        lambda r: r.uniform(0.001, 5),
        lambda r: r.paretovariate(1.5),
    ],
)
@pytest.mark.parametrize("per_doubling", [4, 8, 16])
def test_quantiles_are_within_the_documented_relative_error_of_numpy(dist, per_doubling):
    # Given samples from a skewed distribution
    rng = random.Random(per_doubling)
    samples = [dist(rng) for _ in range(20_000)]
    layout = ExponentialBuckets(per_doubling)
    counts: dict[int, int] = {}
    for v in samples:
        i = layout.index(v)
        counts[i] = counts.get(i, 0) + 1
    # When quantiles are estimated from the buckets
    est = quantiles([(layout, counts)], (0.5, 0.9, 0.99, 0.999))
    # Then each is within (g-1)/(g+1) of numpy's (same rank rule: method="lower")
    for q, value in est.items():
        exact = float(np.quantile(samples, q, method="lower"))
        assert abs(value - exact) / exact <= layout.relative_error + 1e-12, (q, value, exact)


def test_the_documented_error_of_the_default_layout_is_about_4_percent():
    assert ExponentialBuckets().relative_error == pytest.approx(0.0433, abs=1e-4)


def test_histograms_of_several_processes_merge_to_the_histogram_of_all_samples():
    # Given samples split between three emitters
    rng = random.Random(7)
    samples = [rng.lognormvariate(0, 1) for _ in range(9000)]
    parts = [samples[0::3], samples[1::3], samples[2::3]]
    layout = ExponentialBuckets()
    merged: dict[int, int] = {}
    for part in parts:
        for v in part:
            i = layout.index(v)
            merged[i] = merged.get(i, 0) + 1
    # Then the merged counts give the same quantiles as one histogram of everything
    whole: dict[int, int] = {}
    for v in samples:
        whole[layout.index(v)] = whole.get(layout.index(v), 0) + 1
    assert merged == whole
    assert sum(merged.values()) == len(samples)


def test_explicit_buckets_interpolate_within_the_bucket_that_holds_the_quantile():
    layout = ExplicitBuckets((0.1, 0.5, 1.0))
    counts = {layout.index(v): 0 for v in (0.05,)}
    for v in [0.05] * 10 + [0.3] * 80 + [0.7] * 10:
        counts[layout.index(v)] = counts.get(layout.index(v), 0) + 1
    est = quantiles([(layout, counts)], (0.5, 0.95))
    assert 0.1 <= est[0.5] <= 0.5
    assert 0.5 <= est[0.95] <= 1.0


def test_zero_and_tiny_values_land_in_the_zero_bucket():
    layout = ExponentialBuckets()
    est = quantiles([(layout, {layout.index(0.0): 5, layout.index(1e-12): 5})], (0.5,))
    assert est[0.5] == 0.0


@pytest.mark.parametrize("spec", ["exp:0", "exp:x", "explicit:", "explicit:2,1", "foo:1", [3, "a"], 12])
def test_invalid_bucket_specs_are_refused(spec):
    with pytest.raises(ValidationError):
        parse_buckets(spec)


def test_bucket_specs_round_trip():
    assert parse_buckets("exp:16").spec == "exp:16"
    assert parse_buckets([0.1, 1, 10]).spec == "explicit:0.1,1.0,10.0"
    assert parse_buckets(parse_buckets("explicit:0.1,1").spec) == ExplicitBuckets((0.1, 1.0))


def test_changing_the_buckets_of_a_prefix_at_run_time_keeps_earlier_counts():
    # Given a histogram under the default layout with some observations
    tel = Telemetry(store=None)
    try:
        h = tel.histogram("api.latency_seconds", {"route": "/a"})
        for _ in range(10):
            h.observe(0.2)
        # When its prefix is configured with explicit buckets
        rule = tel.configure("api.", buckets=[0.1, 0.5, 1.0], windows=["1m", 600])
        for _ in range(5):
            h.observe(0.7)
        # Then the count covers both layouts and the new layout is used from now on
        s = tel.snapshot(cluster=False)["metrics"]["api.latency_seconds"]["series"][0]
        assert s["count"] == 15
        assert s["layouts"] == ["exp:8", "explicit:0.1,0.5,1.0"]
        assert rule.windows_s == (60, 600)
        assert h.layout.spec == "explicit:0.1,0.5,1.0"
    finally:
        tel.close()


def test_pinned_buckets_must_agree():
    tel = Telemetry(store=None)
    try:
        tel.histogram("sizes.bytes", buckets=[100, 1000])
        with pytest.raises(ValidationError, match="uses buckets"):
            tel.histogram("sizes.bytes", buckets="exp:4")
    finally:
        tel.close()


def test_apply_config_validates_everything_before_changing_anything():
    tel = Telemetry(store=None)
    try:
        with pytest.raises(ValidationError):
            tel.apply_config({"aggregation": {"a.": {"buckets": "exp:8"}, "b.": {"windows": [7]}}})
        assert "a." not in tel.rules.as_dict()
        tel.apply_config({"telemetry.aggregation": {"a.": {"buckets": "exp:4", "gauge_merge": "max"}}})
        assert tel.rules.for_name("a.x").buckets.spec == "exp:4"
        assert tel.rules.for_name("a.x").gauge_merge == "max"
    finally:
        tel.close()
