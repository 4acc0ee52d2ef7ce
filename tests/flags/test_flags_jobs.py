"""Flags follow the work: a job sees the variant of the request that enqueued it (real worker subprocess)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import esf
from esf import JobHandle
from tests.jobs.conftest import Broker, delete_amqp_queues
from tests.jobs.harness import Worker, settings_env

from . import flag_apps

EXPERIMENT = {"variants": {"list": "list", "grid": "grid"}, "off_variant": "list"}


@pytest.mark.parametrize(("broker", "consistency"), [("redis", "consistent"), ("redis", "latest"),
                                                    ("amqp", "consistent")])
def test_a_job_sees_the_variant_of_the_request_that_enqueued_it_even_after_the_flag_changed(
        redis_url, amqp_url, tmp_path, broker, consistency):
    # Given an application (broker Redis or RabbitMQ, configuration on Redis) whose flag "checkout"
    # serves "grid" to everyone
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = settings_env(redis_url if broker == "redis" else amqp_url, queues=(queue,), redis_url=redis_url,
                       data_dir=str(tmp_path / "data"), extra={
        "ESF_CONFIG_REDIS_PREFIX": f"test:{uuid.uuid4().hex[:8]}:", "ESF_TELEMETRY_ENABLED": "false",
        "ESF_EVENTS_RECORD_JOB_EVENTS": "false", "ESF_FLAGS_JOB_CONSISTENCY": consistency})
    fnd = flag_apps.build(esf.Settings.from_env(env))
    worker = None
    try:
        fnd.flags.set("checkout", {**EXPERIMENT, "serve": {"variant": "grid"}})
        fnd.flags.set("other", {**EXPERIMENT, "serve": {"variant": "grid"}})
        seen = fnd.jobs.get("flags.seen")
        # When a request evaluates it in its scope and enqueues a job (which enqueues a child job)
        with fnd.flags.scope({"key": "user-1"}) as scope:
            assert fnd.flags.variant("checkout") == "grid"
            handle = seen.enqueue(True)
        assert scope.answers["checkout"][1] == "grid"
        # And a job enqueued outside any scope
        plain = seen.enqueue(False)
        # And then the flags change to "list" before any worker runs the jobs
        fnd.flags.set("checkout", {**EXPERIMENT, "serve": {"variant": "list"}})
        fnd.flags.set("other", {**EXPERIMENT, "serve": {"variant": "list"}})
        worker = Worker(env, Path(tmp_path / "worker.log"), app="tests.flags.flag_apps:make", concurrency=1)
        worker.wait_ready()
        result = handle.wait(timeout=60)
        child = JobHandle(fnd.jobs, result["child"], "flags.seen").wait(timeout=60)
        outside = plain.wait(timeout=60)
    finally:
        if worker is not None:
            worker.discard()
        fnd.close()
        if broker == "amqp":
            delete_amqp_queues(Broker("amqp", env, queue))
    if consistency == "consistent":
        # Then the job and its child see the request's answer, with the request's reason
        assert (result["variant"], result["value"], result["reason"]) == ("grid", "grid", "default")
        assert (child["variant"], child["reason"]) == ("grid", "default")
    else:
        # Then (latest) they evaluate again and see the new variant
        assert result["variant"] == "list" and child["variant"] == "list"
    # And a flag the request did not evaluate, or a job from outside any scope, gets the current answer
    assert result["other"] == "list" and child["other"] == "list"
    # (the job outside a scope has no context: the flag needs none for a fixed variant)
    assert outside["variant"] == "list"
