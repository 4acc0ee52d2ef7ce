"""Rotation hooks on Redis and HTTP clients, with the file backend (a private Redis whose password changes)."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from esf.plugins.file_secrets import FileSecretsProvider

from esf.secrets import SecretHeaderAuth, SecretsService, rotating_redis
from esf.settings import SecretsSettings
from tests.servers import PrivateRedis


def test_a_redis_client_follows_a_password_rotation_without_dropping_busy_connections(
        private_redis: PrivateRedis, tmp_path: Path) -> None:
    # Given a private Redis requiring password one, and a client taking it from the secrets file
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"cache": {"password": "pass-one"}}))
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("requirepass", "pass-one")
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file", cache_ttl_s=3600))
    client = rotating_redis(secrets, "cache", private_redis.url)
    busy = client.connection_pool.get_connection()  # checked out: in use during the rotation
    assert client.set("k", "v")  # opens a second connection, idle in the pool afterwards
    idle = client.connection_pool._available_connections[0]
    assert idle is not busy and idle._sock is not None
    # When the password changes in Redis and in the secret, and the service refreshes
    redis.Redis.from_url(private_redis.url, password="pass-one").config_set("requirepass", "pass-two-2")
    path.write_text(json.dumps({"cache": {"password": "pass-two-2"}}))
    assert secrets.refresh()["rotated"] == ["cache"]
    # Then the idle connection was closed, the busy one still works with its old login
    assert idle._sock is None
    busy.send_command("PING")
    assert busy.read_response() in (b"PONG", "PONG", True)
    # And the next command (on the idle connection) logs in again with the new password
    assert client.get("k") == b"v"
    assert idle._sock is not None
    client.connection_pool.release(busy)
    client.close()
    admin.close()


def test_an_http_auth_header_follows_the_secret(tmp_path: Path) -> None:
    # Given a header built from a token secret
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"api": {"token": "tok-1"}}))
    secrets = SecretsService(FileSecretsProvider(path), SecretsSettings(backend="file", cache_ttl_s=0))
    auth = SecretHeaderAuth(secrets, "api", "token")
    assert auth.headers() == {"Authorization": "Bearer tok-1"}
    # When the token rotates, then the next request carries the new one; the repr never shows it
    path.write_text(json.dumps({"api": {"token": "tok-22"}}))
    import requests

    prepared = auth(requests.Request("GET", "http://example.invalid/").prepare())
    assert prepared.headers["Authorization"] == "Bearer tok-22"
    assert "tok-" not in repr(auth)
