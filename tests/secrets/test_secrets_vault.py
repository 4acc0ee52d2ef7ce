"""The Vault backend against a real OpenBao server: KV v2 reads, version pinning, AppRole, token upkeep."""

from __future__ import annotations

import time
from typing import Any

import pytest
from esf.plugins.vault_secrets import VaultSecretsProvider

from esf.errors import PermissionDenied, SecretNotFound, ServiceUnavailable, ValidationError
from esf.secrets import Secret, SecretChange, SecretsService
from esf.settings import SecretsSettings
from tests.secrets.conftest import Bao


def service(provider: VaultSecretsProvider, events: list[tuple[str, dict[str, Any]]] | None = None,
            **settings: Any) -> SecretsService:
    sink = (lambda kind, payload: events.append((kind, payload))) if events is not None else None
    return SecretsService(provider, SecretsSettings(backend="vault", **settings), emit=sink)


def token_provider(bao: Bao, **kw: Any) -> VaultSecretsProvider:
    return VaultSecretsProvider(bao.url, token=Secret(bao.root_token), timeout_s=2, **kw)


def put(bao: Bao, path: str, **data: str) -> int:
    resp = bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
    return int(resp["data"]["version"])


def test_a_kv_secret_is_read_as_a_redacted_value_and_a_version_can_be_pinned(bao: Bao) -> None:
    # Given two versions of secret/app-db
    v1 = put(bao, "app-db", password="first-pw", user="app")
    v2 = put(bao, "app-db", password="second-pw", user="app")
    secrets = service(token_provider(bao), cache_ttl_s=0)
    # When it is read without and with a version
    latest = secrets.get("app-db", "password")
    pinned = secrets.get("app-db", "password", version=v1)
    # Then the latest is the second version, the pinned one the first, and neither shows in repr/str
    assert latest.reveal() == "second-pw"
    assert pinned.reveal() == "first-pw"
    assert secrets.read("app-db").version == v2
    assert "pw" not in repr(latest) + str(latest) + f"{pinned}" + repr(secrets.read("app-db"))


def test_missing_secrets_keys_and_versions_and_bad_input_raise_specific_errors(bao: Bao) -> None:
    # Given a secret with two keys
    put(bao, "two-keys", a="1", b="2")
    secrets = service(token_provider(bao))
    # Then each kind of bad request raises its own error, naming no value
    with pytest.raises(SecretNotFound):
        secrets.get("no-such-secret", "x")
    with pytest.raises(SecretNotFound):
        secrets.get("two-keys", "c")
    with pytest.raises(SecretNotFound):
        secrets.get("two-keys", "a", version=99)
    with pytest.raises(ValidationError) as need_key:
        secrets.get("two-keys")
    assert "'a'" in str(need_key.value) and "1" not in str(need_key.value).replace("'a'", "")
    for bad in ("", "/abs", "a/../b", "sp ace"):
        with pytest.raises(ValidationError):
            secrets.get(bad, "a")
    with pytest.raises(ValidationError):
        secrets.get("two-keys", "a", version=0)


def test_a_token_vault_refuses_is_permission_denied_not_a_crash(bao: Bao) -> None:
    # Given a provider with a token Vault does not know
    secrets = service(VaultSecretsProvider(bao.url, token=Secret("not-a-token"), timeout_s=2))
    # When it reads, then the refusal is PermissionDenied and the token is not echoed
    with pytest.raises(PermissionDenied) as info:
        secrets.get("anything", "x")
    assert "not-a-token" not in str(info.value)


def test_a_new_kv_version_is_detected_and_subscribers_hear_of_it_without_the_value(bao: Bao) -> None:
    # Given a secret read once and a subscriber
    put(bao, "rotating", password="old-value")
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = service(token_provider(bao), events, cache_ttl_s=3600)
    assert secrets.get("rotating", "password").reveal() == "old-value"
    heard: list[SecretChange] = []
    secrets.subscribe("rotating", heard.append)
    # When a new version is written and the service refreshes
    v = put(bao, "rotating", password="new-value")
    report = secrets.refresh()
    # Then the subscriber heard of version v, reads return the new value, and the event holds no value
    assert [(c.path, c.kind, c.version) for c in heard] == [("rotating", "version", v)]
    assert report["rotated"] == ["rotating"]
    assert secrets.get("rotating", "password").reveal() == "new-value"
    assert ("secrets.rotated", heard[0].to_dict()) in events
    assert "value" not in repr(events).replace("'previous_version'", "").replace("'version'", "")
    # And a refresh without a change notifies nobody
    secrets.refresh()
    assert len(heard) == 1


def approle(bao: Bao, *, token_ttl: str, token_max_ttl: str, policies: str = "reader") -> tuple[str, str]:
    client = bao.client()
    if "approle/" not in client.sys.list_auth_methods():
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy("reader", 'path "secret/data/*" { capabilities = ["read"] }\n'
                                                 'path "database/creds/*" { capabilities = ["read"] }')
    name = f"r{time.monotonic_ns()}"
    client.auth.approle.create_or_update_approle(name, token_policies=[policies], token_ttl=token_ttl,
                                                 token_max_ttl=token_max_ttl)
    role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    return role_id, secret_id


def test_approle_logs_in_and_renews_its_token_while_it_is_renewable(bao: Bao) -> None:
    # Given an AppRole whose tokens last 4 s, renewable up to 60 s
    role_id, secret_id = approle(bao, token_ttl="4s", token_max_ttl="60s")
    put(bao, "approle-read", password="pw")
    provider = VaultSecretsProvider(bao.url, auth="approle", role_id=role_id, secret_id=Secret(secret_id),
                                    timeout_s=2, renew_margin=0.5)
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = service(provider, events, renew_margin=0.5)
    # When it reads (first login), then waits past half the TTL and refreshes
    assert secrets.get("approle-read", "password").reveal() == "pw"
    first = provider.client.token
    deadline = time.monotonic() + 10
    while provider.client.auth.token.lookup_self()["data"]["ttl"] > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    report = secrets.refresh()
    # Then the same token was renewed (not replaced), its TTL back above half
    assert report["auth"]["action"] == "renewed"
    assert provider.client.token == first
    assert provider.client.auth.token.lookup_self()["data"]["ttl"] > 2
    assert [k for k, _ in events if k.startswith("secrets.token_")] == ["secrets.token_renewed"]


def test_approle_logs_in_again_when_its_token_reached_its_maximum_ttl(bao: Bao) -> None:
    # Given an AppRole whose tokens last 4 s and cannot be renewed past 4 s
    role_id, secret_id = approle(bao, token_ttl="4s", token_max_ttl="4s")
    put(bao, "approle-max", password="pw")
    provider = VaultSecretsProvider(bao.url, auth="approle", role_id=role_id, secret_id=Secret(secret_id),
                                    timeout_s=2, renew_margin=0.5)
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = service(provider, events)
    assert secrets.get("approle-max", "password").reveal() == "pw"
    first = provider.client.token
    # When less than half of its TTL is left and the service refreshes
    deadline = time.monotonic() + 10
    while provider.client.auth.token.lookup_self()["data"]["ttl"] > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    report = secrets.refresh()
    # Then a renewal could not extend it, so the service logged in again for a new token
    assert report["auth"]["action"] == "login"
    assert provider.client.token != first
    assert [k for k, _ in events if k.startswith("secrets.token_")] == ["secrets.token_login"]


def test_approle_logs_in_again_when_its_token_has_expired(bao: Bao) -> None:
    # Given an AppRole whose tokens expire after 2 s and cannot be renewed past that
    role_id, secret_id = approle(bao, token_ttl="2s", token_max_ttl="2s")
    put(bao, "approle-expiry", password="pw")
    provider = VaultSecretsProvider(bao.url, auth="approle", role_id=role_id, secret_id=Secret(secret_id),
                                    timeout_s=2)
    secrets = service(provider, cache_ttl_s=0)
    assert secrets.get("approle-expiry", "password").reveal() == "pw"
    first = provider.client.token
    # When the token has expired (Vault refuses it)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            bao.client(first).auth.token.lookup_self()
        except Exception:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the AppRole token never expired")
    # Then the next read logs in again (a new token) and succeeds
    assert secrets.get("approle-expiry", "password").reveal() == "pw"
    assert provider.client.token != first


def test_a_path_refused_by_policy_is_permission_denied_without_a_new_login(bao: Bao) -> None:
    # Given an AppRole whose policy reads only secret/data/*
    role_id, secret_id = approle(bao, token_ttl="60s", token_max_ttl="120s")
    put(bao, "allowed", password="pw")
    provider = VaultSecretsProvider(bao.url, auth="approle", role_id=role_id, secret_id=Secret(secret_id),
                                    timeout_s=2)
    secrets = service(provider)
    assert secrets.get("allowed", "password").reveal() == "pw"
    token = provider.client.token
    # When it asks for a dynamic secret its policy does not allow
    with pytest.raises(PermissionDenied):
        secrets.lease("sys/not-allowed")
    # Then the token, still valid, was kept: no login was made for a policy refusal
    assert provider.client.token == token


def test_token_auth_without_a_token_and_approle_without_credentials_are_refused_at_start() -> None:
    from esf.errors import SettingsError

    with pytest.raises(SettingsError):
        VaultSecretsProvider("http://127.0.0.1:1")
    with pytest.raises(SettingsError):
        VaultSecretsProvider("http://127.0.0.1:1", auth="approle", role_id="r")


def test_an_unreachable_vault_is_service_unavailable_within_the_timeout() -> None:
    # Given nothing listens on the port
    from tests.servers import free_port

    secrets = service(VaultSecretsProvider(f"http://127.0.0.1:{free_port()}", token=Secret("t"), timeout_s=1))
    # When it reads, then it fails with ServiceUnavailable and health is degraded with the reason
    with pytest.raises(ServiceUnavailable):
        secrets.get("x", "y")
    health = secrets.health()
    assert health["status"] == "degraded" and "unreachable" in health["reason"]


def test_a_forked_child_reads_over_its_own_http_session(bao: Bao) -> None:
    import os

    # Given a provider that has read once (its session holds a keep-alive connection)
    put(bao, "forked", password="pw")
    provider = token_provider(bao)
    assert provider.read("forked").data["password"].reveal() == "pw"
    # When a child process reads after a fork
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it read with a session of its own
        before = provider.client.adapter.session
        ok = provider.read("forked").data["password"].reveal() == "pw"
        os._exit(0 if ok and provider.client.adapter.session is not before else 1)
    _, status = os.waitpid(pid, 0)
    # Then the child used a new session, and the parent still reads with its own
    assert os.waitstatus_to_exitcode(status) == 0
    assert provider.read("forked").data["password"].reveal() == "pw"


def test_health_is_degraded_while_the_backends_token_is_near_its_end_and_ok_once_a_refresh_reads_more(
        bao: Bao, tmp_path: Any) -> None:
    from esf import Foundation, Settings
    from esf.settings import HealthSettings

    # Given a Foundation on OpenBao with a token of its own (30 s, renewable), warning 20 s before a
    # secret ends, no keeper thread, and a clock the test moves
    token = bao.client().auth.token.create(policies=["root"], ttl="30s", renewable=True)["auth"]["client_token"]
    settings = Settings(data_dir=str(tmp_path / "data"),
                        secrets=SecretsSettings(backend="vault", vault_url=bao.url, vault_token=Secret(token),
                                                refresh_thread=False),
                        health=HealthSettings(secret_expiry_warn_s=20))
    fnd = Foundation(settings)
    try:
        now = [time.time()]
        fnd.secrets._clock = lambda: now[0]
        # When a refresh reads the token's TTL
        assert fnd.secrets.refresh()["auth"]["ttl_s"] > 20
        # Then with about 30 s left the secrets service is ok
        assert fnd.health()["services"]["secrets"]["status"] == "ok"
        # When 15 s pass with no token upkeep
        now[0] += 15
        health = fnd.health()
        # Then secrets is degraded, the reason naming the token and its seconds left, and the process ready
        report = health["services"]["secrets"]
        assert report["status"] == "degraded"
        assert report["reason"].startswith("secret near expiry: auth/token in 1")
        assert health["status"] == "degraded" and health["ready"] is True
        # When a refresh reads the token's TTL again (OpenBao's clock has not moved: about 30 s)
        fnd.secrets.refresh()
        # Then secrets is ok again, without a reason
        report = fnd.health()["services"]["secrets"]
        assert report["status"] == "ok" and "reason" not in report
    finally:
        fnd.close()
