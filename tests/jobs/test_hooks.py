"""Foundation.run_hooks: order, isolation of failures, and hooks registered at any time."""

from __future__ import annotations

import logging

import pytest

import esf
from esf.errors import HookError
from esf.hooks import JobContext, JobHooks


def _ctx() -> JobContext:
    return JobContext(job_id="j-1", job_name="t.job", queue="default")


class Recorder(JobHooks):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_process(self, ctx: JobContext) -> None:
        self.calls.append(f"{self.name}.before")

    def after_process(self, ctx: JobContext, **_: object) -> None:
        self.calls.append(f"{self.name}.after")


@pytest.fixture
def fnd(tmp_path):
    # No history and no telemetry: only the hooks each test registers.
    settings = esf.Settings.from_env({"ESF_DATA_DIR": str(tmp_path), "ESF_TELEMETRY_ENABLED": "false",
                                      "ESF_EVENTS_RECORD_JOB_EVENTS": "false"})
    f = esf.Foundation(settings)
    yield f
    f.close()


def test_before_hooks_run_in_order_and_after_hooks_in_reverse(fnd):
    calls: list[str] = []
    fnd.add_hooks(Recorder("a", calls))
    fnd.add_hooks(Recorder("b", calls))
    fnd.run_hooks("before_process", _ctx())
    fnd.run_hooks("after_process", _ctx(), runtime_s=0.0)
    assert calls == ["a.before", "b.before", "b.after", "a.after"]


def test_hooks_registered_after_a_first_run_are_called_too(fnd):
    # Given hooks that already ran once (the call order is worked out on first use)
    calls: list[str] = []
    fnd.add_hooks(Recorder("a", calls))
    fnd.run_hooks("before_process", _ctx())
    # When more hooks are registered
    fnd.add_hooks(Recorder("b", calls))
    fnd.run_hooks("before_process", _ctx())
    # Then they run as well
    assert calls == ["a.before", "a.before", "b.before"]


def test_a_failing_hook_is_logged_and_the_others_still_run(fnd, caplog):
    calls: list[str] = []

    class Broken(JobHooks):
        def before_process(self, ctx: JobContext) -> None:
            raise RuntimeError("boom")

    fnd.add_hooks(Broken())
    fnd.add_hooks(Recorder("ok", calls))
    with caplog.at_level(logging.ERROR, logger="esf"):
        fnd.run_hooks("before_process", _ctx())
    assert calls == ["ok.before"]
    assert "Broken.before_process failed" in caplog.text


def test_a_hook_error_propagates(fnd):
    class Refuses(JobHooks):
        def before_enqueue(self, ctx: JobContext) -> None:
            raise HookError("refused by policy")

    fnd.add_hooks(Refuses())
    with pytest.raises(HookError, match="refused by policy"):
        fnd.run_hooks("before_enqueue", _ctx())


def test_a_hook_set_on_the_instance_is_called(fnd):
    # Given a plain JobHooks whose method is set on the object, not its class
    calls: list[str] = []
    hooks = JobHooks()
    hooks.before_process = lambda ctx: calls.append("instance")  # type: ignore[method-assign]
    fnd.add_hooks(hooks)
    fnd.run_hooks("before_process", _ctx())
    assert calls == ["instance"]
