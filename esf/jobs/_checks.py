"""Start-up checks of what jobs depend on: the Redis broker's durability, and the Celery and kombu internals
of the Redis job lease."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import MissingDependency, ServiceUnavailable, SettingsError

if TYPE_CHECKING:
    import redis

log = logging.getLogger("esf.jobs")

#: What :func:`check_redis_broker` reports when it cannot read the settings (``CONFIG GET`` refused, …).
DURABILITY_UNKNOWN = "durability unknown"


class RedisDurabilityWarning(UserWarning):
    """The Redis used as a broker can lose queued jobs, or its durability cannot be verified."""


def redis_durability_problems(client: redis.Redis[bytes]) -> list[str]:
    """What makes this Redis unsafe as a job broker (empty when it is safe).

    Raises:
        redis.RedisError: ``CONFIG GET`` failed (refused by an ACL, renamed away, server down).
    """
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
    elif client.config_get("appendfsync").get("appendfsync") == "no":
        problems.append("appendfsync is 'no': the operating system decides when queued jobs reach the disk "
                        "(typically every 30 s), so a machine crash loses them; set 'appendfsync everysec'")
    return problems


def check_redis_broker(client: redis.Redis[bytes], mode: str) -> list[str]:
    """Warn (``mode='warn'``) or raise SettingsError (``'error'``) when the Redis broker is not durable.

    A Redis whose settings cannot be read (``CONFIG GET`` refused by an ACL or
    renamed away) is not assumed durable: it is reported as
    :data:`DURABILITY_UNKNOWN`, warned about, and refused in ``error`` mode. A
    Redis that does not answer at all is warned about the same way, and in
    ``error`` mode raises ServiceUnavailable: the check is to be made again when
    it answers (a worker starts with its broker down).

    Returns:
        The problems found (empty when the broker is durable or ``mode`` is ``off``).

    Raises:
        SettingsError: ``mode`` is ``error`` and the broker is not durable, or its durability is unknown.
        ServiceUnavailable: ``mode`` is ``error`` and the broker cannot be reached.
    """
    if mode == "off":
        return []
    import redis as _redis

    try:
        problems = redis_durability_problems(client)
        text = "the Redis broker is not durable: " + "; ".join(problems)
    except (_redis.ConnectionError, _redis.TimeoutError) as exc:
        answered = (_redis.AuthenticationError, getattr(_redis, "AuthorizationError", _redis.AuthenticationError))
        if mode == "error" and not isinstance(exc, answered):  # refusing a login is an answer
            raise ServiceUnavailable(f"the Redis broker did not answer ({type(exc).__name__}); its durability "
                                     "is checked when it does") from None
        problems = [f"{DURABILITY_UNKNOWN}: the Redis broker could not be reached ({type(exc).__name__})"]
        text = "the Redis broker's " + problems[0]
    except Exception as exc:  # CONFIG may be refused by an ACL or renamed away
        problems = [f"{DURABILITY_UNKNOWN}: its persistence settings could not be read ({type(exc).__name__}; "
                    "CONFIG GET may be refused to this user); grant it '+config|get', or set "
                    "jobs.redis_durability_check = 'off' once its persistence is verified by hand"]
        text = "the Redis broker's " + problems[0]
    if problems:
        if mode == "error":
            raise SettingsError(text + " (jobs.redis_durability_check = 'error')", setting="broker_url")
        log.warning("WARNING: %s", text)
        warnings.warn(text, RedisDurabilityWarning, stacklevel=3)
    return problems


#: kombu's default key of the sorted set of unacknowledged deliveries.
UNACKED_INDEX_KEY = "unacked_index"
#: kombu's separator between a queue name and its priority step.
PRIORITY_SEP = "\x06\x16"
#: kombu's default priority steps (a queue is one Redis list per step).
PRIORITY_STEPS = (0, 3, 6, 9)
#: The oldest releases whose internals the lease has been checked against.
MIN_VERSIONS = {"celery": "5.7", "kombu": "5.7"}


def lease_internals_problems() -> list[str]:
    """What the installed Celery and kombu lack of what the lease relies on (empty when nothing is missing)."""
    from celery.worker import request as celery_request
    from celery.worker import state
    from kombu.transport import redis as kombu_redis

    problems: list[str] = []
    if not isinstance(getattr(state, "requests", None), dict):
        problems.append("celery.worker.state.requests (the reserved and running requests) is missing")
    if not isinstance(getattr(state, "scheduled_requests", None), Iterable):
        problems.append("celery.worker.state.scheduled_requests (the requests held for an ETA) is missing")
    if not isinstance(getattr(celery_request.Request, "message", None), property):
        problems.append("celery.worker.request.Request.message is missing")
    channel = getattr(kombu_redis, "Channel", None)
    if getattr(channel, "unacked_index_key", None) != UNACKED_INDEX_KEY:
        problems.append(f"kombu's Redis Channel.unacked_index_key is not {UNACKED_INDEX_KEY!r}")
    if getattr(channel, "sep", None) != PRIORITY_SEP:
        problems.append("kombu's Redis Channel.sep (the priority-step separator) changed")
    if tuple(getattr(channel, "priority_steps", ()) or ()) != PRIORITY_STEPS:
        problems.append(f"kombu's Redis Channel.priority_steps is not {list(PRIORITY_STEPS)}")
    return problems


def check_lease_internals() -> None:
    """Refuse to run the lease on a Celery or kombu that lacks what it relies on.

    Raises:
        MissingDependency: an internal is missing; the message names it, the
            installed versions and the versions to install.
    """
    problems = lease_internals_problems()
    if problems:
        import celery
        import kombu

        need = " and ".join(f"{name}>={version}" for name, version in MIN_VERSIONS.items())
        raise MissingDependency(
            f"the Redis job lease cannot run on celery {celery.__version__} / kombu {kombu.__version__}: "
            + "; ".join(problems) + f". Install {need}.",
            celery=celery.__version__, kombu=kombu.__version__,
        )
