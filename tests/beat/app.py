"""The application the beat tests run, in-process and in `esf beat` subprocesses (settings from ESF_*)."""

from __future__ import annotations

import json
import os
import time

import esf
from esf.foundation import Foundation
from esf.hooks import JobContext, JobHooks
from esf.jobs._schedules import schedule_decorator


class FireLog(JobHooks):
    """Appends one JSON line per enqueued job (pid, job, occurrence key) to a file shared by processes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_enqueue(self, ctx: JobContext) -> None:
        line = json.dumps({"pid": os.getpid(), "job": ctx.job_name, "key": ctx.idempotency_key,
                           "job_id": ctx.job_id, "args": list(ctx.args), "queue": ctx.queue,
                           "at": time.time()}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write of a short line with O_APPEND: lines never interleave
        finally:
            os.close(fd)


def read_fires(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def build(settings: esf.Settings | None = None, *, fire_log: str | None = None, declare: bool = False) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())
    path = fire_log or os.environ.get("BEAT_TEST_FIRE_LOG")
    if path:
        fnd.add_hooks(FireLog(path))

    @fnd.job(name="b.tick", retries=0)
    def tick(n: int = 0) -> int:
        return n

    @fnd.job(name="b.other", retries=0)
    def other(label: str = "") -> str:
        return label

    @fnd.job(name="b.count", retries=0)
    def count() -> int:
        from esf.jobs._meta import current_job

        cur = current_job.get()
        fnd.jobs.coordinator.incr(f"ran:{cur.correlation_id if cur else 'none'}", 600)
        return fnd.jobs.coordinator.incr("ran-total", 600)

    if declare or os.environ.get("BEAT_TEST_DECLARE"):

        @schedule_decorator(fnd, "b.hourly", every=3600, args=(7,))
        def hourly(n: int) -> int:
            return n

    return fnd


def make() -> Foundation:
    return build()
