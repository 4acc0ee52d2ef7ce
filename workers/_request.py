"""The worker-side request of an ESF job: a hard time limit dead-letters the job."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from celery.exceptions import TimeLimitExceeded
from celery.worker.request import Request

from esf.jobs._task import EsfTask

log = logging.getLogger("esf.workers")


class EsfRequest(Request):  # type: ignore[misc]
    """A request whose hard time limit sends the job to its dead-letter queue."""

    #: The hard time limit was handled (dead-lettered, or the job given back): Celery calls
    #: both ``on_failure`` and ``on_timeout`` for it, in either order.
    _esf_timeout_handled = False

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Dead-letter the job killed by its hard time limit before Celery acknowledges it."""
        if not soft:
            self._handle_hard_timeout(timeout)
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, TimeLimitExceeded):
            limit = exc.args[0] if exc.args and isinstance(exc.args[0], int | float) else 0.0
            self._handle_hard_timeout(float(limit))
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _handle_hard_timeout(self, timeout: float) -> None:
        """Publish the job's dead letter; when it is not stored, give the job back to its queue.

        ``reject(requeue=True)`` marks the request acknowledged, so the acknowledgement
        Celery sends next is skipped: the job is never dropped.
        """
        task = self.task
        if self._esf_timeout_handled or not isinstance(task, EsfTask):
            return
        self._esf_timeout_handled = True
        try:
            self._dead_letter_timeout(task, timeout)
        except Exception:
            log.exception("could not dead-letter job %s[%s] after its hard time limit; "
                          "it goes back to its queue", self.name, self.id)
            self.reject(requeue=True)

    def _dead_letter_timeout(self, task: EsfTask, timeout: float) -> None:
        from esf.jobs._meta import JobMeta
        from esf.jobs._task import request_headers

        class _Req:
            headers = self._request_dict.get("headers") or {}

        raw = dict(self._request_dict)
        headers = {**raw, **(raw.get("headers") or {})}
        _Req.headers = headers
        meta = JobMeta.from_headers(request_headers(_Req), task.esf_job.options.queue)
        if meta.first_attempt_at is None:
            # The first attempt is this one: it started when the pool process accepted it
            # (billiard reports that on the monotonic clock, shared by the processes of one host).
            now = time.time()
            accepted = self.time_start if isinstance(self.time_start, int | float) else None
            started = now - max(0.0, time.monotonic() - accepted) if accepted else now
            meta = replace(meta, first_attempt_at=started)
        args: tuple[Any, ...] = tuple(self.args or ())
        kwargs: dict[str, Any] = dict(self.kwargs or {})
        exc = TimeoutError(f"hard time limit ({timeout:.0f} s) exceeded; the worker process was killed")
        entry = task.dead_letter_entry(meta, args, kwargs, "time_limit", exc)
        task.foundation.jobs.dead_letter(replace(entry, job_id=str(self.id)))
