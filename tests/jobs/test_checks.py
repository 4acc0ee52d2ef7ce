"""Start-up checks: a Redis broker that can lose jobs is reported loudly."""

from __future__ import annotations

import pytest
import redis

import esf
from esf.errors import SettingsError
from esf.foundation import Foundation
from esf.jobs._checks import DURABILITY_UNKNOWN, RedisDurabilityWarning, check_redis_broker
from tests.servers import PrivateRedis


def test_a_redis_broker_without_persistence_is_warned_about_or_refused(redis_url: str, data_dir) -> None:  # type: ignore[no-untyped-def]
    # Given the shared test Redis, which keeps nothing on disk
    fnd = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir)))
    # When a worker would start on it, a warning names the problem and the fix
    with pytest.warns(RedisDurabilityWarning, match="appendonly yes"):
        problems = fnd._runtime.check_broker()
    assert problems
    # And with the strict setting it refuses to start
    strict = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir),
                                     jobs=esf.settings.JobSettings(redis_durability_check="error")))
    with pytest.raises(SettingsError, match="not durable"):
        strict._runtime.check_broker()
    fnd.close()
    strict.close()


def test_a_redis_that_refuses_config_get_is_reported_unknown_and_refused_in_error_mode(
    private_redis: PrivateRedis,
) -> None:
    # Given a durable Redis (AOF, appendfsync always, noeviction) and a user that may not run CONFIG
    admin = redis.Redis.from_url(private_redis.url)
    admin.acl_setuser("jobs", enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-config"])
    limited = redis.Redis(host="127.0.0.1", port=private_redis.port, username="jobs", password="")
    try:
        # When the check runs as the admin, then it finds nothing
        assert check_redis_broker(admin, "error") == []
        # When it runs as the user whose CONFIG GET is refused, then it does not pass: a warning says unknown
        with pytest.warns(RedisDurabilityWarning, match="durability unknown"):
            problems = check_redis_broker(limited, "warn")
        assert len(problems) == 1 and problems[0].startswith(DURABILITY_UNKNOWN)
        # And the strict mode refuses to start
        with pytest.raises(SettingsError, match="durability unknown"):
            check_redis_broker(limited, "error")
    finally:
        admin.close()
        limited.close()


def test_a_redis_with_appendfsync_no_is_warned_about(private_redis: PrivateRedis) -> None:
    # Given a Redis with AOF on but appendfsync no
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.config_set("appendfsync", "no")
        # When the check runs, then it warns and names the fix; the strict mode refuses
        with pytest.warns(RedisDurabilityWarning, match="appendfsync everysec"):
            problems = check_redis_broker(client, "warn")
        assert [p for p in problems if p.startswith("appendfsync is 'no'")]
        with pytest.raises(SettingsError, match="appendfsync"):
            check_redis_broker(client, "error")
        # And with appendfsync everysec it passes
        client.config_set("appendfsync", "everysec")
        assert check_redis_broker(client, "error") == []
    finally:
        client.close()
