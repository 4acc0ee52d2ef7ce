"""Telemetry of the cache and the ``esf cache`` commands."""

from __future__ import annotations

import json

import pytest

from esf import Foundation
from esf.cli import main
from esf.settings import CacheSettings, Settings, TelemetrySettings


@pytest.fixture
def env(monkeypatch, redis_url, data_dir, unique):
    """The environment the ``esf`` command reads: the leased Redis, this test's cache prefix."""
    values = {"ESF_REDIS_URL": redis_url, "ESF_DATA_DIR": str(data_dir), "ESF_CACHE_REDIS_PREFIX": f"t{unique}:"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def fnd(env):
    f = Foundation(Settings(data_dir=env["ESF_DATA_DIR"], redis_url=env["ESF_REDIS_URL"],
                            cache=CacheSettings(redis_prefix=env["ESF_CACHE_REDIS_PREFIX"]),
                            telemetry=TelemetrySettings(store="redis")))
    # Subscribed first: the subscription drops what the process holds (messages may have been missed).
    f.cache.core.ensure_started()
    assert f.cache.core.subscribed.wait(10)
    yield f
    f.close()


def test_hits_misses_loads_and_waits_are_counted_per_tier_and_namespace(fnd):
    # Given lookups: one miss and load, one in-process hit, one shared hit (from a second cache), in "prices"
    prices = fnd.cache.namespace("prices")
    prices.fetch("sku-1", lambda: 10)
    prices.get("sku-1")
    fnd.cache.core.local.clear()
    prices.get("sku-1")
    # When the counters are exported (and pushed to the shared store)
    fnd.cache.stats()
    assert fnd.telemetry.flush()
    snapshot = fnd.telemetry.snapshot("esf.cache")["metrics"]
    series = {(m, tuple(sorted(s["labels"].items()))): s.get("value", s.get("count"))
              for m, body in snapshot.items() for s in body["series"]}
    # Then each is a series labelled by namespace (and tier for hits), and the loader time is a histogram
    assert series[("esf.cache.hits", (("namespace", "prices"), ("tier", "local")))] == 1
    assert series[("esf.cache.hits", (("namespace", "prices"), ("tier", "shared")))] == 1
    assert series[("esf.cache.misses", (("namespace", "prices"),))] == 1
    assert series[("esf.cache.loads", (("namespace", "prices"),))] == 1
    assert series[("esf.cache.load_seconds", (("namespace", "prices"),))] == 1
    # And exporting again adds only what is new
    prices.get("sku-1")
    fnd.cache.stats()
    assert fnd.telemetry.flush()
    snapshot = fnd.telemetry.snapshot("esf.cache")["metrics"]
    local = [s for s in snapshot["esf.cache.hits"]["series"] if s["labels"]["tier"] == "local"]
    assert local[0]["value"] == 2


def test_cache_health_is_part_of_the_foundation_health(fnd):
    fnd.cache.put("k", 1)
    assert fnd.health()["services"]["cache"]["status"] == "ok"


def test_esf_cache_get_prints_a_cached_value_and_fails_for_an_absent_one(fnd, capsys):
    # Given a value cached by the application
    fnd.cache.namespace("prices").put("sku-1", {"eur": 12.5})
    # When the command reads it, and an absent key
    assert main(["cache", "get", "sku-1", "--namespace", "prices"]) == 0
    out = capsys.readouterr().out
    code = main(["cache", "get", "nope", "--namespace", "prices"])
    # Then the value is printed as JSON, and the absent key exits 1 with a message
    assert json.loads(out) == {"eur": 12.5}
    assert code == 1 and "not cached" in capsys.readouterr().err


def test_esf_cache_invalidate_drops_a_key_or_a_whole_namespace_on_every_process(fnd, capsys):
    # Given two keys of "prices" held in the application's process
    prices = fnd.cache.namespace("prices")
    prices.put("sku-1", 1)
    prices.put("sku-2", 2)
    # When one key is invalidated from the command line
    assert main(["cache", "invalidate", "prices", "sku-1"]) == 0
    # Then the application's process no longer serves it, but still serves the other
    from tests.cache.conftest import wait_until

    assert wait_until(lambda: prices.get("sku-1") is None, timeout=5)
    assert prices.get("sku-2") == 2
    # When the whole namespace is invalidated, Then the other key is gone too
    assert main(["cache", "invalidate", "prices"]) == 0
    assert "version 1" in capsys.readouterr().out
    assert wait_until(lambda: prices.get("sku-2") is None, timeout=5)


def test_esf_cache_stats_reports_namespaces_and_the_counters_of_every_process(fnd, capsys):
    # Given an application process that looked up keys and pushed its counters
    prices = fnd.cache.namespace("prices")
    prices.fetch("sku-1", lambda: 1)
    prices.get("sku-1")
    prices.bump()
    fnd.cache.stats()
    assert fnd.telemetry.flush()
    # When stats are asked from another Foundation (the command's)
    assert main(["cache", "stats", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # Then they show the namespace's version and the application's counters
    assert report["namespaces"]["prices"] == 1
    assert report["metrics"]["esf.cache.hits{namespace=prices,tier=local}"] == 1
    assert report["metrics"]["esf.cache.loads{namespace=prices}"] == 1


def test_fnd_cached_caches_a_function_under_the_key_it_is_given(fnd):
    calls = []

    @fnd.cached(ttl=30, key=lambda user_id: f"perm:{user_id}")
    def permissions(user_id):
        calls.append(user_id)
        return [f"read:{user_id}"]

    # When the function is called twice, Then it ran once, and its value is the cache entry of its key
    assert permissions(1) == permissions(1) == ["read:1"]
    assert calls == [1]
    assert fnd.cache.get("perm:1") == ["read:1"]


def test_esf_cache_get_and_invalidate_refuse_without_a_shared_tier(monkeypatch, data_dir, capsys):
    # Given no Redis configured (each process has its own in-process tier)
    monkeypatch.setenv("ESF_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ESF_TELEMETRY_STORE", "none")
    # When the commands that need the shared tier run, Then they exit 1 and say why
    for argv in (["cache", "invalidate", "prices"], ["cache", "get", "k"]):
        assert main(argv) == 1
        assert "no shared tier" in capsys.readouterr().err
    # And stats still report the backend
    assert main(["cache", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "local"
