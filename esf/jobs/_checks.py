"""Start-up checks of the servers jobs depend on."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from ..errors import SettingsError

if TYPE_CHECKING:
    import redis

log = logging.getLogger("esf.jobs")


class RedisDurabilityWarning(UserWarning):
    """The Redis used as a broker can lose queued jobs."""


def redis_durability_problems(client: redis.Redis[bytes]) -> list[str]:
    """What makes this Redis unsafe as a job broker (empty when it is safe)."""
    problems: list[str] = []
    conf = client.config_get("maxmemory-policy")
    policy = conf.get("maxmemory-policy")
    if policy not in (None, "noeviction"):
        problems.append(f"maxmemory-policy is {policy!r}: Redis may evict queued jobs; set it to 'noeviction'")
    aof = client.config_get("appendonly").get("appendonly")
    save = client.config_get("save").get("save")
    if aof != "yes":
        if not save:
            problems.append("Redis keeps nothing on disk (appendonly no, no RDB save): a restart loses every "
                            "queued job; set 'appendonly yes' and 'appendfsync everysec'")
        else:
            problems.append("appendonly is off: a crash loses the jobs queued since the last RDB snapshot; "
                            "set 'appendonly yes' and 'appendfsync everysec'")
    return problems


def check_redis_broker(client: redis.Redis[bytes], mode: str) -> list[str]:
    """Warn (``mode='warn'``) or raise SettingsError (``'error'``) when the Redis broker is not durable."""
    if mode == "off":
        return []
    try:
        problems = redis_durability_problems(client)
    except Exception as exc:  # CONFIG may be disabled by ACLs
        log.info("could not read the Redis broker's persistence settings: %s", exc)
        return []
    if problems:
        text = "the Redis broker is not durable: " + "; ".join(problems)
        if mode == "error":
            raise SettingsError(text + " (jobs.redis_durability_check = 'error')", setting="broker_url")
        log.warning("WARNING: %s", text)
        warnings.warn(text, RedisDurabilityWarning, stacklevel=3)
    return problems
