"""Vault stopped and started: cached values until their expiry, degraded health, then recovery."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from esf.plugins.vault_secrets import VaultSecretsProvider

from esf.errors import ServiceUnavailable
from esf.secrets import Secret, SecretsService
from esf.settings import SecretsSettings
from tests.jobs.harness import wait_for
from tests.secrets.conftest import Bao


def build(bao: Bao, events: list[tuple[str, dict[str, Any]]], **settings: Any) -> SecretsService:
    provider = VaultSecretsProvider(bao.url, token=Secret(bao.root_token), timeout_s=settings.pop("timeout_s", 1))
    return SecretsService(provider, SecretsSettings(backend="vault", **settings),
                          emit=lambda kind, payload: events.append((kind, payload)))


def seed(bao: Bao, value: str) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(path="svc", secret={"token": value}, mount_point="secret")


def test_a_stopped_vault_serves_the_cached_value_until_its_hard_expiry_then_recovers(private_bao: Bao) -> None:
    # Given a value read once, re-read at every call (no cache TTL), served for 600 s of outage at most
    seed(private_bao, "tok-1")
    events: list[tuple[str, dict[str, Any]]] = []
    secrets = build(private_bao, events, cache_ttl_s=0, hard_expiry_s=600, breaker_failures=2,
                    breaker_reset_s=0.2)
    now = [time.time()]
    secrets._clock = lambda: now[0]
    assert secrets.get("svc", "token").reveal() == "tok-1"
    assert secrets.health()["status"] == "ok"
    # When Vault stops
    private_bao.stop()
    # Then reads keep serving the cached value, and health is degraded with the reason
    for _ in range(4):  # enough to open the breaker: later reads fail fast
        assert secrets.get("svc", "token").reveal() == "tok-1"
    health = secrets.health()
    assert health["status"] == "degraded" and "vault backend unreachable" in health["reason"]
    assert [k for k, _ in events] == ["secrets.unreachable"]
    # When the hard expiry has passed, then reads fail with ServiceUnavailable naming the path, not the value
    now[0] += 601
    with pytest.raises(ServiceUnavailable) as info:
        secrets.get("svc", "token")
    assert "svc" in str(info.value) and "tok-1" not in str(info.value)
    # When Vault is back (a dev server starts empty: the secret is written again)
    private_bao.start()
    seed(private_bao, "tok-2")
    # Then reads recover once the breaker lets a trial call through, and health is ok again
    wait_for(lambda: _reads(secrets) == "tok-2", timeout=10, message="reads to recover")
    assert secrets.health()["status"] == "ok"
    assert [k for k, _ in events][-1] == "secrets.reachable"


def _reads(secrets: SecretsService) -> str | None:
    try:
        return secrets.get("svc", "token").reveal()
    except ServiceUnavailable:
        return None


def test_a_hung_vault_does_not_hold_a_read_longer_than_the_timeout(private_bao: Bao) -> None:
    # Given a value read once and a 1 s timeout
    seed(private_bao, "tok")
    secrets = build(private_bao, [], cache_ttl_s=0, timeout_s=1)
    assert secrets.get("svc", "token").reveal() == "tok"
    assert private_bao.proc is not None
    # When Vault hangs (stopped with SIGSTOP: connections are accepted, nothing answers)
    private_bao.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        value = secrets.get("svc", "token").reveal()
        elapsed = time.monotonic() - started
    finally:
        private_bao.proc.send_signal(signal.SIGCONT)
    # Then the cached value is served once the timeout has passed (a bound, not a benchmark)
    assert value == "tok"
    assert elapsed < 3, elapsed
