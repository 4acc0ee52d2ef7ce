"""ConfigService over SQLite and Redis: atomic batches, CAS, history, subscribers, bad input."""

from __future__ import annotations

import json
import types

import pytest

from esf import Secret
from esf.config import DELETE, REDACTED, ChangeEvent
from esf.errors import ConcurrencyConflict, NotFound, PermissionDenied, ValidationError

from .conftest import FAST, eventually

BILLING_SCHEMA = {
    "type": "object",
    "properties": {
        "billing": {
            "type": "object",
            "properties": {
                "retries": {"type": "integer", "minimum": 0, "default": 3},
                "enabled": {"type": "boolean", "default": False},
                "currency": {"type": "string"},
            },
            "additionalProperties": False,
        }
    },
}


def test_a_batch_applies_all_changes_and_raises_the_version_by_exactly_one(make_service):
    # Given a service on an empty store
    svc = make_service()
    assert svc.version == 0
    # When a batch of three changes is applied
    version = svc.update_batch({"billing.retries": 7, "billing.enabled": True, "ui.theme": "dark"})
    # Then every change is visible at once under one new version
    assert version == 1 == svc.version
    assert svc.get("billing.retries") == 7
    assert svc.get("billing.enabled") is True
    assert svc.get("ui") == {"theme": "dark"}


def test_a_batch_with_one_invalid_entry_applies_nothing(make_service):
    # Given a schema and a first version
    svc = make_service()
    svc.register_schema(BILLING_SCHEMA)
    svc.update_batch({"billing.retries": 1})
    # When a batch holds valid changes and one of the wrong type
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"billing.retries": 5, "billing.enabled": "yes", "other.flag": True})
    # Then the error names the bad path, and nothing was applied
    assert set(info.value.errors) == {"billing.enabled"}
    assert svc.version == 1
    assert svc.get("billing.retries") == 1
    assert svc.get("other.flag", default=None) is None
    assert len(svc.history()) == 1


def test_every_bad_path_of_a_batch_is_named(make_service):
    # Given a closed schema
    svc = make_service()
    svc.register_schema(BILLING_SCHEMA)
    # When a batch has an unknown path, a wrong type and a value below the minimum
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"billing.nope": 1, "billing.currency": 5, "billing.retries": -1})
    # Then each is reported under its own path
    assert set(info.value.errors) == {"billing.nope", "billing.currency", "billing.retries"}
    assert "closed" in info.value.errors["billing.nope"]
    assert info.value.code == "validation_failed"


def test_schema_defaults_are_served_under_stored_values(make_service):
    svc = make_service()
    svc.register_schema(BILLING_SCHEMA)
    assert svc.get("billing.retries") == 3
    svc.update("billing.retries", 9)
    assert svc.get("billing") == {"retries": 9, "enabled": False}


def test_a_pydantic_model_validates_and_gives_defaults(make_service):
    import pydantic  # a dev dependency: the test runs everywhere

    class Billing(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        retries: int = 3
        rate: float = 0.5

    svc = make_service()
    svc.register_schema(Billing, prefix="billing")
    assert svc.get("billing.retries") == 3
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"billing.retries": "7", "billing.extra": 1})
    assert set(info.value.errors) == {"billing.retries", "billing.extra"}
    assert svc.update_batch({"billing.rate": 2}) == 1
    assert svc.get("billing.rate") == 2


@pytest.mark.parametrize(
    ("changes", "bad"),
    [
        ({"a..b": 1}, "a..b"),
        ({"1abc": 1}, "1abc"),
        ({"a.b c": 1}, "a.b c"),
        ({"": 1}, ""),
        ({"a": {"bad key": 1}}, "a.bad key"),
        ({"a": float("nan")}, "a"),
        ({"a": {1, 2}}, "a"),
        ({"a": b"bytes"}, "a"),
        ({"a": object()}, "a"),
    ],
)
def test_malformed_paths_and_non_json_values_are_rejected(make_service, changes, bad):
    svc = make_service()
    with pytest.raises(ValidationError) as info:
        svc.update_batch(changes)
    assert bad in info.value.errors
    assert svc.version == 0


def test_overlapping_paths_in_one_batch_are_rejected(make_service):
    svc = make_service()
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"a": {"b": 1}, "a.b": 2})
    assert "a.b" in info.value.errors


def test_an_oversize_value_is_rejected(make_service):
    svc = make_service(FAST.__class__(**{**FAST.__dict__, "max_value_bytes": 100}))
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"small": 1, "big": "x" * 200})
    assert "limit" in info.value.errors["big"]
    assert svc.version == 0


def test_esf_paths_and_declared_read_only_paths_cannot_be_changed(make_service):
    # Given ESF's defaults and a read-only application path
    svc = make_service(esf_defaults={"config": {"history_limit": 10}})
    svc.register_schema(read_only=["app.region"])
    assert svc.get("esf.config.history_limit") == 10
    # When either is changed, directly or through a parent
    for changes in ({"esf.config.history_limit": 5}, {"app": {"region": "x"}}, {"app.region": "y"}):
        with pytest.raises(PermissionDenied):
            svc.update_batch(changes)
    # Then nothing was written
    assert svc.version == 0


def test_restricted_paths_accept_only_their_actors_and_refusals_are_audited(make_service):
    events = []
    svc = make_service(audit=events.append)
    svc.register_schema(restricted={"billing.limits": {"finance"}})
    with pytest.raises(PermissionDenied):
        svc.update("billing.limits.max", 10, actor="intern")
    assert events[-1]["type"] == "config.denied" and events[-1]["paths"] == ["billing.limits.max"]
    assert svc.update("billing.limits.max", 10, actor="finance") == 1


def test_compare_and_set_conflicts_when_the_version_moved(make_service):
    # Given two processes on the same store
    a = make_service()
    b = make_service()
    a.update("x", 1)
    # When both write with the same expected version
    a.update("x", 2, expected_version=1)
    with pytest.raises(ConcurrencyConflict) as info:
        b.update("x", 3, expected_version=1)
    # Then the second loses and learns the actual version
    assert info.value.expected == 1 and info.value.actual == 2
    assert info.value.code == "concurrency_conflict"
    eventually(lambda: b.get("x", None) == 2, what="b applies version 2")


def test_a_stale_writer_without_expected_version_retries_on_the_latest_document(make_service):
    a = make_service()
    b = make_service()
    b.test_hooks.drop_notifications = True
    b.test_hooks.freeze = True  # b keeps serving version 0
    a.update("x", 1)
    b.test_hooks.freeze = False
    # b's snapshot is stale, yet its write must not lose a's change
    version = b.update("y", 2)
    assert version == 2
    assert b.get() == {"x": 1, "y": 2}


def test_returned_values_never_change_under_the_caller(make_service):
    svc = make_service()
    svc.update_batch({"a": {"b": [1, 2, {"c": 3}]}})
    tree = svc.get()
    sub = svc.get("a")
    assert isinstance(tree, types.MappingProxyType) and isinstance(sub, types.MappingProxyType)
    assert sub["b"] == (1, 2, {"c": 3}) and isinstance(sub["b"], tuple)
    with pytest.raises(TypeError):
        sub["b"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        sub["b"][2]["c"] = 4
    svc.update("a.b", [9])
    assert sub["b"] == (1, 2, {"c": 3})
    assert svc.get("a.b") == (9,)


def test_get_of_a_missing_path_raises_not_found_or_returns_the_default(make_service):
    svc = make_service()
    with pytest.raises(NotFound):
        svc.get("nope")
    assert svc.get("nope", 5) == 5
    with pytest.raises(ValidationError):
        svc.get("bad..path")


def test_values_read_back_can_be_written_again(make_service):
    svc = make_service()
    svc.update("a", {"b": [1, {"c": 2}]})
    svc.update("copy", svc.get("a"))
    assert svc.get("copy") == svc.get("a")


def test_delete_removes_a_path(make_service):
    svc = make_service()
    svc.update_batch({"a.b": 1, "a.c": 2})
    svc.update("a.b", DELETE)
    assert svc.get("a") == {"c": 2}


def test_rollback_writes_a_new_version_equal_to_an_old_one(make_service):
    svc = make_service()
    svc.update_batch({"a": 1, "b": {"c": 2}})
    svc.update_batch({"a": 5, "d": True})
    # When rolling back to version 1
    version = svc.rollback(1, actor="ops")
    # Then version 3 has version 1's content and says so
    assert version == 3
    assert svc.get() == {"a": 1, "b": {"c": 2}}
    newest = svc.history(limit=1)[0]
    assert newest.version == 3 and newest.rollback_of == 1 and newest.actor == "ops"
    assert svc.diff(1, 3) == ()
    with pytest.raises(NotFound):
        svc.rollback(99)


def test_diff_lists_each_changed_leaf(make_service):
    svc = make_service()
    svc.update_batch({"a": 1, "b": {"c": 2, "d": 3}})
    svc.update_batch({"a": 2, "b.d": DELETE, "e": "new"})
    changes = {c.path: (c.old, c.new) for c in svc.diff(1, 2)}
    assert changes == {"a": (1, 2), "b.d": (3, DELETE), "e": (DELETE, "new")}
    assert [c.path for c in svc.diff(0, 1)] == ["a", "b.c", "b.d"]


def test_history_records_who_when_and_what(make_service):
    svc = make_service()
    svc.update("a", 1, actor="alice")
    svc.update("a", 2, actor="bob")
    entries = svc.history()
    assert [e.version for e in entries] == [2, 1]
    assert entries[0].actor == "bob" and entries[0].changes[0].to_dict() == {"path": "a", "old": 1, "new": 2}
    assert entries[0].at >= entries[1].at


def test_history_is_bounded_by_the_setting(make_service):
    svc = make_service(FAST.__class__(**{**FAST.__dict__, "history_limit": 3}))
    for i in range(6):
        svc.update("a", i)
    assert [e.version for e in svc.history(limit=10)] == [6, 5, 4]
    with pytest.raises(NotFound):
        svc.rollback(2)


def test_a_subscriber_is_called_once_per_batch_after_the_swap(make_service):
    # Given a subscriber on "billing" in another process
    writer = make_service()
    reader = make_service()
    seen: list[tuple[ChangeEvent, object]] = []
    reader.subscribe("billing", lambda event: seen.append((event, reader.get("billing.retries", None))))
    # When two batches touch billing and one does not
    writer.update_batch({"billing.retries": 1, "billing.enabled": True})
    writer.update_batch({"ui.theme": "dark"})
    writer.update_batch({"billing.retries": 2})
    eventually(lambda: reader.version == 3, what="reader applies version 3")
    # Then it got one call per billing batch, with old and new values, after the swap
    assert len(seen) == 2
    first, value_then = seen[0]
    assert first.version == 1 and {c.path for c in first.changes} == {"billing.retries", "billing.enabled"}
    assert value_then == 1
    second, value_then = seen[1]
    assert second.changes[0].old == 1 and second.changes[0].new == 2 and value_then == 2


def test_unsubscribing_stops_calls_and_a_failing_subscriber_does_not_break_updates(make_service):
    svc = make_service()
    calls = []

    def boom(event):
        raise RuntimeError("subscriber bug")

    svc.subscribe("", boom)
    handle = svc.subscribe("", calls.append)
    svc.update("a", 1)
    handle()
    svc.update("a", 2)
    assert len(calls) == 1 and svc.get("a") == 2


def test_secrets_are_redacted_in_history_diffs_and_audit(make_service):
    events = []
    svc = make_service(audit=events.append)
    svc.register_schema(secret=["db.password"])
    svc.update_batch({"db.password": "hunter2", "api.token": Secret("tok-123"), "db.host": "h"})
    # The live value is there, wrapped as a Secret
    assert isinstance(svc.get("db.password"), Secret) and svc.get("db.password").reveal() == "hunter2"
    assert svc.get("api.token").reveal() == "tok-123"
    svc.update("db.password", "changed")
    # Nowhere else does a clear value appear
    dumped = json.dumps([e.to_dict() for e in svc.history()]) + json.dumps(events)
    dumped += repr(svc.diff(0, 2)) + repr(svc.get())
    for clear in ("hunter2", "tok-123", "changed"):
        assert clear not in dumped
    assert REDACTED in dumped
    assert events[-1]["type"] == "config.updated" and events[-1]["changes"][0]["path"] == "db.password"


def test_rollback_keeps_current_secret_values(make_service):
    svc = make_service()
    svc.update_batch({"db.password": Secret("one"), "a": 1})
    svc.update_batch({"db.password": Secret("two"), "a": 2})
    svc.rollback(1)
    assert svc.get("a") == 1 and svc.get("db.password").reveal() == "two"


def test_a_failing_audit_sink_never_fails_the_update(make_service):
    def broken(payload):
        raise OSError("event store down")

    svc = make_service(audit=broken)
    assert svc.update("a", 1) == 1 and svc.get("a") == 1


def test_a_lost_notification_is_caught_by_reconciliation(make_service):
    # Given a process that drops every notification on purpose
    writer = make_service()
    deaf = make_service()
    deaf.test_hooks.drop_notifications = True
    # When several versions are committed elsewhere
    for i in range(3):
        writer.update("n", i)
    # Then periodic reconciliation catches up over the gap
    eventually(lambda: deaf.version == 3, what="reconciliation")
    assert deaf.get("n") == 2
    assert deaf.counters["reconciled"] >= 1


def test_cold_start_with_an_unreachable_store_serves_the_local_snapshot(make_service, tmp_path):
    from esf.plugins.redis_config import RedisConfigStore

    from esf.config import ConfigService

    # Given a node that applied version 2 and saved its snapshot
    first = make_service(data_dir=tmp_path / "node")
    first.update_batch({"a": 1, "db.password": Secret("s3cret")})
    first.update("a", 2)
    identity = first._store.identity
    first.close()
    # When it starts again and the store cannot be reached (same identity, dead address)
    dead = RedisConfigStore("redis://127.0.0.1:1/0", prefix="x:", timeout_s=0.5)
    dead.identity = identity
    svc = ConfigService(dead, settings=FAST, data_dir=tmp_path / "node")
    try:
        # Then it serves the saved version, without its secrets, and says it is degraded
        assert svc.version == 2 and svc.get("a") == 2
        assert svc.get("db.password", None) is None
        health = svc.health()
        assert health.status == "degraded" and health.source == "local-snapshot" and not health.store_reachable
    finally:
        svc.close()


def test_nodes_report_their_applied_version_and_health_is_ok(make_service):
    a = make_service(node_id="node-a")
    b = make_service(node_id="node-b")
    a.update("x", 1)
    eventually(lambda: [n.version for n in a.nodes()] == [1, 1], what="both nodes report version 1")
    assert [n.node_id for n in b.nodes()] == ["node-a", "node-b"]
    assert a.health().status == "ok"


def test_a_node_stuck_on_an_old_version_is_reported_as_diverged(make_service):
    a = make_service(node_id="node-a")
    stuck = make_service(node_id="node-stuck")
    stuck.test_hooks.freeze = True
    a.update("x", 1)
    health = eventually(lambda: (h := a.health()).diverged and h, what="divergence reported")
    assert health.status == "degraded" and [n.node_id for n in health.diverged] == ["node-stuck"]


def test_a_closed_node_leaves_the_node_list(make_service):
    a = make_service(node_id="node-a")
    b = make_service(node_id="node-b")
    eventually(lambda: len(a.nodes()) == 2, what="two nodes")
    b.close()
    assert [n.node_id for n in a.nodes()] == ["node-a"]


def test_a_notification_after_a_gap_applies_each_missed_batch_in_order(make_service):
    # Given a reader with no periodic reconciliation to speak of, deaf to two versions
    slow = FAST.__class__(**{**FAST.__dict__, "reconcile_interval_s": 3600.0})
    writer = make_service()
    reader = make_service(slow)
    seen = []
    reader.subscribe("", lambda event: seen.append((event.version, event.paths)))
    reader.test_hooks.drop_notifications = True
    writer.update("a", 1)
    writer.update("b", 2)
    reader.test_hooks.drop_notifications = False
    # When the next notification arrives (version 3, two ahead of the reader)
    writer.update("c", 3)
    eventually(lambda: reader.version == 3, what="reader applies version 3")
    # Then the reader saw the gap, reloaded, and its subscriber got one call per batch
    assert seen == [(1, ("a",)), (2, ("b",)), (3, ("c",))]
    assert reader.get() == {"a": 1, "b": 2, "c": 3}
    # (seen as a gap, or on the first poll after start, which always resynchronises: which of
    # the two catches a missed batch depends on timing, so at least one was replayed)
    assert reader.counters["replayed"] >= 1, reader.counters


def test_the_factory_picks_sqlite_without_redis_and_redis_with_it(tmp_path, redis_url):
    from esf import Settings
    from esf.config import create_config_service

    embedded = create_config_service(Settings(data_dir=str(tmp_path)), node_id="n1")
    try:
        assert embedded._store.kind == "sqlite" and (tmp_path / "config.sqlite").exists()
        assert embedded.get("esf.config.history_limit") == 1000
    finally:
        embedded.close()
    settings = Settings(data_dir=str(tmp_path), redis_url=redis_url)
    with create_config_service(settings, node_id="n2") as served:
        assert served._store.kind == "redis"
        served.update("a", 1)
        assert served.history()[0].node == "n2"
        # ESF's settings are published read-only, without URLs or credentials
        assert "redis://" not in repr(served.get("esf"))
        with pytest.raises(PermissionDenied):
            served.update("esf.node", "x")


def test_an_unknown_wait_mode_is_rejected_before_anything_is_written(make_service):
    svc = make_service()
    with pytest.raises(ValidationError):
        svc.update_batch({"a": 1}, wait="some")
    assert svc.version == 0


def test_with_a_writable_allowlist_every_other_path_is_denied_and_audited(make_service):
    events = []
    svc = make_service(audit=events.append)
    svc.register_schema(writable=["billing", "ui.theme"])
    assert svc.update_batch({"billing.retries": 1, "ui.theme": "dark"}) == 1
    for changes in ({"other": 1}, {"ui": {"theme": "x"}}, {"ui.font": "mono"}):
        with pytest.raises(PermissionDenied):
            svc.update_batch(changes)
    assert [e["type"] for e in events].count("config.denied") == 3
    assert svc.version == 1


def test_audit_payloads_are_json_with_a_stable_event_id_per_version(make_service):
    events = []
    svc = make_service(audit=events.append)
    svc.update("a", 1, actor="alice")
    payload = events[-1]
    assert json.loads(json.dumps(payload)) == payload
    assert payload["type"] == "config.updated" and payload["version"] == 1 and payload["previous_version"] == 0
    assert payload["actor"] == "alice" and payload["changes"] == [{"path": "a", "new": 1}]
    assert len(payload["event_id"]) == 36
    svc.update("a", 2)
    assert events[-1]["event_id"] != payload["event_id"]


def test_health_records_the_diverged_processes_as_a_gauge(make_service, tmp_path):
    from esf.settings import Settings
    from esf.telemetry import create_telemetry

    # Given a service with telemetry, and another process stuck on an old version
    telemetry = create_telemetry(Settings(data_dir=str(tmp_path / "telemetry")))
    try:
        a = make_service(node_id="node-a", telemetry=lambda: telemetry)
        stuck = make_service(node_id="node-stuck")
        stuck.test_hooks.freeze = True
        a.update("x", 1)
        # When its health reports the divergence; Then the gauge counts the stuck process
        eventually(lambda: a.health().diverged, what="divergence reported")
        series = telemetry.snapshot("esf.config.diverged_nodes", cluster=False)["metrics"]["esf.config.diverged_nodes"]
        assert [s["value"] for s in series["series"]] == [1]
    finally:
        telemetry.close()
