"""Dynamic PostgreSQL credentials from OpenBao's database engine, and an engine that follows them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from esf.plugins.vault_secrets import VaultSecretsProvider

from esf import Foundation, Settings
from esf.errors import ServiceUnavailable
from esf.secrets import Secret, SecretChange, SecretsService, rotating_engine
from esf.settings import HealthSettings, SecretsSettings
from tests.jobs.harness import wait_for
from tests.secrets.conftest import Bao

PATH_ROLE = "app"


def configure_database(bao: Bao, pg_url: str, ttl: str = "30s") -> str:
    """``database/creds/<role>``: roles of ``ttl`` (renewable to 120 s) in the test's own database."""
    client = bao.client()
    if "database/" not in client.sys.list_mounted_secrets_engines():
        client.sys.enable_secrets_engine("database")
    name = f"db{uuid.uuid4().hex[:8]}"
    dbname = pg_url.rsplit("/", 1)[1]
    client.secrets.database.configure(
        name=name, plugin_name="postgresql-database-plugin",
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:5432/{dbname}?sslmode=disable",
        username="postgres", password="trust-auth-ignores-it", allowed_roles=[name])
    client.secrets.database.create_role(
        name=name, db_name=name, default_ttl=ttl, max_ttl="120s",
        creation_statements=["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                             "VALID UNTIL '{{expiration}}';"])
    return f"database/creds/{name}"


@pytest.fixture
def creds_path(bao: Bao, pg_url: str) -> Iterator[str]:
    path = configure_database(bao, pg_url)
    try:
        yield path
    finally:
        bao.client().sys.revoke_prefix(path)


def new_service(bao: Bao, events: list[tuple[str, dict[str, Any]]], **settings: Any) -> SecretsService:
    # Without the keeper thread, unless asked: each test decides when leases are checked.
    settings.setdefault("refresh_thread", False)
    provider = VaultSecretsProvider(bao.url, token=__import__("esf").Secret(bao.root_token), timeout_s=2)
    return SecretsService(provider, SecretsSettings(backend="vault", **settings),
                          emit=lambda kind, payload: events.append((kind, payload)))


def engine_url(pg_url: str) -> str:
    return "postgresql+psycopg://127.0.0.1:5432/" + pg_url.rsplit("/", 1)[1]


def current_user(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("select current_user")).scalar_one())


def test_a_lease_is_issued_once_and_renewed_when_most_of_it_has_passed(bao: Bao, creds_path: str) -> None:
    # Given a service that renews leases with half their time left (clock under the test's control)
    events: list[tuple[str, dict[str, Any]]] = []
    now = [time.time()]
    secrets = new_service(bao, events, renew_margin=0.5)
    secrets._clock = lambda: now[0]
    first = secrets.lease(creds_path)
    # When it is asked again early, then it is the same lease
    assert secrets.lease(creds_path) is first
    # When 20 of its 30 s have passed
    now[0] += 20
    renewed = secrets.lease(creds_path)
    # Then it was renewed in Vault (same credentials, later expiry), and the event says so without a value
    assert renewed.lease_id == first.lease_id and renewed.expires_at > first.expires_at
    assert renewed.data["password"] == first.data["password"]
    kinds = [k for k, _ in events]
    assert kinds == ["secrets.lease_issued", "secrets.lease_renewed"]
    assert first.data["password"].reveal() not in repr(events)


def test_a_revoked_lease_is_issued_again_by_refresh_and_subscribers_hear_of_it(bao: Bao, creds_path: str) -> None:
    # Given a held lease and a subscriber
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = new_service(bao, events)
    first = secrets.lease(creds_path)
    heard: list[SecretChange] = []
    secrets.subscribe(creds_path, heard.append)
    # When Vault revokes it and the refresh runs
    bao.client().sys.revoke_lease(first.lease_id)
    report = secrets.refresh()
    # Then a new lease with new credentials is held and the subscriber heard of it
    second = secrets.lease(creds_path)
    assert report["reissued"] == [creds_path]
    assert second.lease_id != first.lease_id and second["username"] != first["username"]
    assert [(c.kind, c.previous_lease_id, c.lease_id) for c in heard] == [("lease", first.lease_id, second.lease_id)]
    assert ("secrets.lease_reissued" in [k for k, _ in events])


def test_an_engine_keeps_serving_queries_when_its_credentials_are_revoked_and_refresh_runs(
        bao: Bao, creds_path: str, pg_url: str) -> None:
    # Given an engine on dynamic credentials and a thread running queries through it
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = new_service(bao, events)
    engine = rotating_engine(secrets, creds_path, engine_url(pg_url), pool_size=2)
    users: list[str] = []
    failures: list[BaseException] = []
    gate = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with gate:
                try:
                    users.append(current_user(engine))
                except BaseException as exc:
                    failures.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    first = secrets.lease(creds_path)
    deadline = time.monotonic() + 20
    while len(users) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    # When Vault revokes the credentials between two queries (their PostgreSQL role is dropped)
    # and the refresh task runs
    with gate:
        bao.client().sys.revoke_lease(first.lease_id)
        report = secrets.refresh()
        served_before = len(users)
    assert report["reissued"] == [creds_path]
    while len(users) < served_before + 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(10)
    engine.dispose()
    # Then no query failed, and the queries after the revocation ran as a new role
    assert not failures, failures[:1]
    assert len(users) >= served_before + 20
    assert set(users[:served_before]) == {first["username"].reveal()}
    new_user = secrets.lease(creds_path)["username"].reveal()
    assert new_user != first["username"].reveal()
    assert set(users[served_before:]) == {new_user}


def test_a_rotation_drains_busy_connections_and_new_ones_use_the_new_credentials(
        bao: Bao, creds_path: str, pg_url: str) -> None:
    # Given an engine with one connection busy in a transaction
    secrets = new_service(bao, [])
    engine = rotating_engine(secrets, creds_path, engine_url(pg_url))
    old_user = current_user(engine)
    busy = engine.connect()
    busy.execute(sa.text("select 1"))
    # When the credentials rotate without being revoked (the lease reached its maximum TTL)
    secrets.leases.reissue(creds_path, reason="test")
    # Then the busy connection finishes its work with the old role, and new connections use the new one
    assert busy.execute(sa.text("select current_user")).scalar_one() == old_user
    busy.close()
    new_user = current_user(engine)
    assert new_user != old_user and new_user == secrets.lease(creds_path)["username"].reveal()
    engine.dispose()


def test_without_a_refresh_only_the_statement_that_meets_the_dropped_role_fails(
        bao: Bao, creds_path: str, pg_url: str) -> None:
    # Given an engine whose pooled connection runs as the leased role
    secrets = new_service(bao, [])
    engine = rotating_engine(secrets, creds_path, engine_url(pg_url), pool_size=1)
    old_user = current_user(engine)
    # When Vault revokes the lease and nothing refreshes
    bao.client().sys.revoke_lease(secrets.lease(creds_path).lease_id)
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(current_user(engine))
        except sa.exc.DBAPIError as exc:
            outcomes.append(type(exc.orig).__name__)
    engine.dispose()
    # Then the pooled session's next statement fails, its connection is discarded, a new lease is
    # issued and the following statements run as the new role
    new_user = secrets.lease(creds_path)["username"].reveal()
    assert new_user != old_user
    assert outcomes == ["UndefinedObject", new_user, new_user]


def test_seconds_to_expiry_is_a_gauge_and_reissues_are_counted(bao: Bao, creds_path: str, tmp_path: Any) -> None:
    from esf.settings import Settings, TelemetrySettings
    from esf.telemetry import create_telemetry

    # Given a service reporting to a telemetry of its own
    telemetry = create_telemetry(Settings(data_dir=str(tmp_path), telemetry=TelemetrySettings(store="none")))
    provider = VaultSecretsProvider(bao.url, token=__import__("esf").Secret(bao.root_token), timeout_s=2)
    secrets = SecretsService(provider, SecretsSettings(backend="vault", refresh_thread=False),
                             telemetry=lambda: telemetry)
    try:
        # When a lease is issued, then revoked and issued again by a refresh
        first = secrets.lease(creds_path)
        expiry = _series(telemetry, "esf.secrets.expires_in_s")
        bao.client().sys.revoke_lease(first.lease_id)
        secrets.refresh()
        # Then the gauge held the lease's 30 s, and the re-issue counted one rotation of kind "lease"
        assert expiry == {(("path", creds_path),): 30.0}
        assert _series(telemetry, "esf.secrets.expires_at_s")[(("path", creds_path),)] == pytest.approx(
            secrets.lease(creds_path).expires_at)
        assert _series(telemetry, "esf.secrets.rotations") == {(("kind", "lease"), ("path", creds_path)): 1}
    finally:
        telemetry.close()


def _series(telemetry: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    metric = telemetry.snapshot(cluster=False)["metrics"].get(name, {"series": []})
    return {tuple(sorted(s["labels"].items())): s["value"] for s in metric["series"]}


def test_a_held_lease_is_served_while_vault_is_down_until_it_expires(private_bao: Bao, pg_url: str) -> None:
    # Given a lease of 30 s held by a service whose clock the test moves
    path = configure_database(private_bao, pg_url)
    secrets = new_service(private_bao, [], breaker_failures=100)
    now = [time.time()]
    secrets._clock = lambda: now[0]
    lease = secrets.lease(path)
    private_bao.client().sys.revoke_prefix(path)  # drop its role now: the server is about to go away
    # When Vault stops and the renewal point (15 s) has passed
    private_bao.stop()
    now[0] += 20
    # Then the held lease is still served, and health says why it is degraded
    assert secrets.lease(path) is lease
    assert secrets.health()["status"] == "degraded"
    # When the lease has ended, then ServiceUnavailable
    now[0] += 15
    with pytest.raises(ServiceUnavailable):
        secrets.lease(path)


def test_the_refresh_thread_renews_a_lease_nobody_asks_for_before_it_ends(bao: Bao, pg_url: str) -> None:
    # Given a lease of 4 s (renewable to 120 s) held by a process that never asks for it again
    path = configure_database(bao, pg_url, ttl="4s")
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = new_service(bao, events, refresh_thread=True)
    try:
        lease = secrets.lease(path)
        # When three of its original lifetimes have passed
        wait_for(lambda: sum(k == "secrets.lease_renewed" for k, _ in events) >= 3, timeout=30,
                 message="three renewals by the keeper thread")
        # Then Vault still knows the lease: it was renewed in the background each time
        assert bao.client().sys.read_lease(lease.lease_id)["data"]["ttl"] > 0
        assert time.time() > lease.expires_at
    finally:
        secrets.close()
        bao.client().sys.revoke_prefix(path)


def test_a_forked_child_keeps_the_leases_it_inherited_alive_with_a_thread_of_its_own(bao: Bao, creds_path: str) -> None:
    import os

    # Given a process holding a lease, with its keeper thread
    secrets = new_service(bao, [], refresh_thread=True)
    try:
        secrets.lease(creds_path)
        assert secrets.keeper.running
        # When a child forked from it asks for the lease
        pid = os.fork()
        if pid == 0:
            before = secrets.keeper.running
            secrets.lease(creds_path)
            os._exit(0 if not before and secrets.keeper.running else 1)
        _, status = os.waitpid(pid, 0)
        # Then the child runs a keeper thread of its own
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        secrets.close()


def test_health_is_degraded_while_a_held_lease_is_near_its_expiry_and_ok_once_it_is_renewed(
        bao: Bao, creds_path: str, tmp_path: Any) -> None:
    # Given a Foundation on OpenBao that warns 20 s before a held lease ends, holding a lease of 30 s
    # (renewable to 120 s), with no keeper thread and a clock the test moves
    settings = Settings(data_dir=str(tmp_path / "data"),
                        secrets=SecretsSettings(backend="vault", vault_url=bao.url, vault_token=Secret(bao.root_token),
                                                refresh_thread=False),
                        health=HealthSettings(secret_expiry_warn_s=20))
    fnd = Foundation(settings)
    try:
        now = [time.time()]
        fnd.secrets._clock = lambda: now[0]
        fnd.secrets.lease(creds_path)
        # Then with 30 s left the secrets service is ok
        assert fnd.health()["services"]["secrets"]["status"] == "ok"
        # When 15 s pass without a renewal (its renewal point came, nothing renewed it)
        now[0] += 15
        health = fnd.health()
        # Then secrets is degraded with the reason naming the lease's path and its seconds left, and the
        # process stays ready (degraded is ready)
        report = health["services"]["secrets"]
        assert report["status"] == "degraded"
        assert report["reason"] == f"secret near expiry: {creds_path} in 15 s"
        assert health["status"] == "degraded" and health["ready"] is True
        # When a refresh renews the lease in OpenBao (30 s again from now)
        assert fnd.secrets.refresh()["renewed"] == [creds_path]
        # Then secrets is ok again, without a reason
        report = fnd.health()["services"]["secrets"]
        assert report["status"] == "ok" and "reason" not in report
    finally:
        fnd.close()
