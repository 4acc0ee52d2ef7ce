"""Invalidation driven by stored events (``invalidate_on``) and by configuration changes (``bind_config``)."""

from __future__ import annotations

import pytest

from esf import Event, Foundation
from esf.errors import ValidationError
from esf.settings import CacheSettings, ConfigSettings, Settings, TelemetrySettings
from tests.cache.conftest import wait_until


@pytest.fixture
def foundations(redis_url, data_dir, unique):
    """Two Foundations (two nodes' worth) on one Redis and one SQLite event store; in-process copies are
    revalidated only every 30 s, so only invalidation messages can evict them within the test."""
    made = []

    def make() -> Foundation:
        f = Foundation(Settings(data_dir=str(data_dir), redis_url=redis_url,
                                cache=CacheSettings(redis_prefix=f"t{unique}:", coherence_s=30.0),
                                config=ConfigSettings(redis_prefix=f"t{unique}:config:"),
                                telemetry=TelemetrySettings(enabled=False)))
        f.cache.core.ensure_started()
        assert f.cache.core.subscribed.wait(10)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_an_appended_event_evicts_the_key_it_names_on_every_node(foundations):
    # Given node A with a rule for user.updated, and node B holding user:1 and user:2 in process
    a, b = foundations(), foundations()
    a.cache.invalidate_on("user.updated", key=lambda e: f"user:{e.data['id']}")
    a.cache.put("user:1", {"name": "Ada"})
    a.cache.put("user:2", {"name": "Bob"})
    assert b.cache.get("user:1") == {"name": "Ada"} and b.cache.get("user:2") == {"name": "Bob"}
    # When A stores a user.updated event for user 1, and an event of another type
    stored = a.events.append([Event("user.updated", {"id": 1}), Event("user.viewed", {"id": 2})])
    # Then B drops user:1 within a second, and keeps user:2
    assert wait_until(lambda: b.cache.get("user:1") is None, timeout=1.0)
    assert b.cache.get("user:2") == {"name": "Bob"}
    # And the events themselves are stored
    assert len(stored) == 2


def test_a_prefix_rule_without_a_key_bumps_the_whole_namespace(foundations):
    # Given a rule: any order.* event invalidates the "orders" namespace
    a, b = foundations(), foundations()
    a.cache.invalidate_on("order.*", namespace="orders")
    a.cache.namespace("orders").put("o-1", "open")
    assert b.cache.namespace("orders").get("o-1") == "open"
    # When an order event is recorded in the background (fnd.record) and flushed
    a.record(Event("order.shipped", {"id": "o-1"}))
    assert a.flush(10)
    # Then every node has dropped the namespace's keys
    assert wait_until(lambda: b.cache.namespace("orders").get("o-1") is None, timeout=2.0)
    assert a.cache.namespace("orders").get("o-1") is None


def test_a_failing_rule_never_fails_the_append(foundations):
    a = foundations()
    a.cache.invalidate_on("user.updated", key=lambda e: e.data["missing"])
    stored = a.events.append(Event("user.updated", {"id": 1}))
    assert len(stored) == 1


def test_a_malformed_rule_is_refused_when_declared(foundations):
    a = foundations()
    with pytest.raises(ValidationError):
        a.cache.invalidate_on("order.*.x")
    with pytest.raises(ValidationError):
        a.cache.invalidate_on("")
    with pytest.raises(ValidationError):
        a.cache.invalidate_on("user.updated", key="user:1")


def test_a_configuration_change_under_a_bound_path_invalidates_the_namespace(foundations):
    # Given node B binds "prices" to the configuration path billing.currency, and holds a price
    a, b = foundations(), foundations()
    b.cache.bind_config("prices", "billing.currency")
    b.cache.namespace("prices").put("sku-1", 10)
    a.cache.namespace("prices").get("sku-1")
    # When node A changes an unrelated path, Then the price stays
    version = a.config.update_batch({"billing.retries": 3})
    b.config.wait_applied(version, timeout=10)
    assert b.cache.namespace("prices").get("sku-1") == 10
    # When node A changes billing.currency
    version = a.config.update_batch({"billing.currency": "EUR"})
    b.config.wait_applied(version, timeout=10)
    # Then the namespace is invalidated on every node
    assert wait_until(lambda: b.cache.namespace("prices").get("sku-1") is None, timeout=2.0)
    assert wait_until(lambda: a.cache.namespace("prices").get("sku-1") is None, timeout=2.0)
