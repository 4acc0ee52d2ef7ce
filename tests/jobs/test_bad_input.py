"""Bad input is refused at the call site with a specific error, and nothing is sent."""

from __future__ import annotations

import datetime as dt
import math

import pytest
import redis

import esf
from esf.errors import (
    PayloadTooLarge,
    SerializationError,
    SettingsError,
    UnknownJob,
    UnknownQueue,
    ValidationError,
)
from esf.foundation import Foundation


@pytest.fixture
def fnd(redis_url: str, data_dir):  # type: ignore[no-untyped-def]
    f = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir),
                                jobs=esf.settings.JobSettings(queues=("default", "billing"),
                                                              max_payload_bytes=10_000)))
    yield f
    f.close()


@pytest.fixture
def job(fnd: Foundation):  # type: ignore[no-untyped-def]
    @fnd.job(name="bad.echo")
    def echo(*args: object, **kwargs: object) -> None:
        return None

    return echo


def queued(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.llen(q) for q in (b"default", b"billing"))
    finally:
        client.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((b"bytes",), {}, "bytes"),
        ((dt.datetime.now(dt.UTC),), {}, "isoformat"),
        ((math.nan,), {}, "NaN"),
        ((math.inf,), {}, "NaN and infinities"),
        (({1: "x"},), {}, "keys must be strings"),
        (({"a": {1, 2}},), {}, "set"),
        ((), {"obj": object()}, "object"),
    ],
)
def test_non_json_arguments_are_refused_before_anything_is_sent(
    fnd: Foundation, job, redis_url: str, args, kwargs, fragment  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(SerializationError) as err:
        job.enqueue(*args, **kwargs)
    assert fragment in str(err.value)
    assert err.value.code == "not_json"
    assert queued(redis_url) == 0


def test_a_huge_payload_is_refused_with_its_size(fnd: Foundation, job, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PayloadTooLarge) as err:
        job.enqueue("x" * 20_000)
    assert "limit of 10000 bytes" in str(err.value)
    assert queued(redis_url) == 0


def test_unknown_job_names_and_queues_are_refused(fnd: Foundation, job, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownJob) as err:
        fnd.jobs.enqueue("no.such.job", 1)
    assert "bad.echo" in str(err.value)
    with pytest.raises(UnknownQueue):
        job.enqueue(1, queue="nowhere")
    with pytest.raises(UnknownQueue):
        job.enqueue(1, queue="billing.dlq")
    assert queued(redis_url) == 0


def test_invalid_job_options_name_every_bad_option(fnd: Foundation) -> None:
    with pytest.raises(ValidationError) as err:
        fnd.job(name="bad name!", queue="nowhere", retries=-1, backoff=-2, timeout=0, rate_limit="fast",
                priority=12)(lambda: None)
    assert set(err.value.errors) == {"name", "queue", "retries", "backoff", "timeout", "priority"}
    with pytest.raises(ValidationError):
        fnd.job(name="ok.rate", rate_limit="fast")(lambda: None)
    with pytest.raises(ValidationError):
        fnd.job(name="ok.retries", retries=True)(lambda: None)
    with pytest.raises(ValidationError):
        fnd.job(name="ok.retry_on", retry_on="ValueError")(lambda: None)


def test_injection_like_strings_are_plain_data(fnd: Foundation, job, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    handle = job.enqueue("'; DROP TABLE x; --", "$(rm -rf /)", correlation_id="c\"'`")
    assert handle.correlation_id == "c\"'`"
    assert queued(redis_url) == 1


def test_bad_enqueue_options_are_refused(fnd: Foundation, job) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        job.enqueue(1, countdown=-5)
    with pytest.raises(ValidationError):
        job.enqueue(1, countdown=1, eta=dt.datetime.now(dt.UTC))
    with pytest.raises(ValidationError):
        job.enqueue(1, eta=dt.datetime.now())  # naive
    with pytest.raises(ValidationError):
        job.enqueue(1, correlation_id="")
    with pytest.raises(ValidationError):
        job.enqueue(1, idempotency_key="k" * 500)


def test_bad_settings_fail_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="jobs.default_retries"):
        esf.Settings.from_env({"ESF_JOBS_DEFAULT_RETRIES": "-1"})
    with pytest.raises(SettingsError, match="ESF_JOBS_NOPE"):
        esf.Settings.from_env({"ESF_JOBS_NOPE": "1"})
    with pytest.raises(SettingsError, match="broker_url"):
        esf.Settings.from_env({"ESF_BROKER_URL": "ftp://x"})
    with pytest.raises(SettingsError, match="jobs.queues"):
        esf.Settings.from_env({"ESF_JOBS_QUEUES": "ok,bad queue"})
    with pytest.raises(SettingsError, match="jobs.default_queue"):
        esf.Settings.from_env({"ESF_JOBS_QUEUES": "a,b", "ESF_JOBS_DEFAULT_QUEUE": "c"})
    with pytest.raises(SettingsError, match="jobs.visibility_timeout_s"):
        esf.Settings.from_env({"ESF_JOBS_VISIBILITY_TIMEOUT_S": "soon"})
    with pytest.raises(SettingsError, match="ESF_SETTINGS"):
        esf.Settings.from_env({"ESF_SETTINGS": "/nonexistent/esf.toml"})


@pytest.mark.parametrize(
    "value",
    [[1, "a", True, None, 1.5], ("t", 2), {"k": 1, "j": [1, 2]}, {}, []],
)
def test_plain_json_values_pass_the_json_check(value):
    from esf._json import check_json

    check_json(value, "args")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, math.nan], "NaN"),
        ([math.inf], "infinities"),
        ({1: "int key"}, "keys must be strings"),
        ({"k": b"bytes"}, "base64"),
        ([{1, 2}], "set"),
    ],
)
def test_non_json_values_are_refused_by_the_json_check_with_their_path(value, fragment):
    from esf._json import check_json
    from esf.errors import SerializationError

    with pytest.raises(SerializationError, match=fragment):
        check_json(value, "args")
