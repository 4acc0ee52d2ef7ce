"""The worker-side request of an ESF job: a hard time limit dead-letters the job."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker.request import Request

from esf.jobs._task import EsfTask

log = logging.getLogger("esf.workers")


class EsfRequest(Request):  # type: ignore[misc]
    """A request whose hard time limit sends the job to its dead-letter queue."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Dead-letter the job killed by its hard time limit, then let Celery acknowledge it.

        When the dead letter is not stored, the job is returned to its queue instead
        (``reject(requeue=True)`` marks the request acknowledged, so Celery's own
        acknowledgement that follows is skipped): the job is never dropped.
        """
        if not soft:
            task = self.task
            if isinstance(task, EsfTask):
                try:
                    self._dead_letter_timeout(task, timeout)
                except Exception:
                    log.exception("could not dead-letter job %s[%s] after its hard time limit; "
                                  "it goes back to its queue", self.name, self.id)
                    self.reject(requeue=True)
        super().on_timeout(soft, timeout)

    def _dead_letter_timeout(self, task: EsfTask, timeout: float) -> None:
        from esf.jobs._meta import JobMeta
        from esf.jobs._task import request_headers

        class _Req:
            headers = self._request_dict.get("headers") or {}

        raw = dict(self._request_dict)
        headers = {**raw, **(raw.get("headers") or {})}
        _Req.headers = headers
        meta = JobMeta.from_headers(request_headers(_Req), task.esf_job.options.queue)
        args: tuple[Any, ...] = tuple(self.args or ())
        kwargs: dict[str, Any] = dict(self.kwargs or {})
        exc = TimeoutError(f"hard time limit ({timeout:.0f} s) exceeded; the worker process was killed")
        now = time.time()
        entry = task.dead_letter_entry(meta, args, kwargs, "time_limit", exc)
        from dataclasses import replace

        entry = replace(entry, job_id=str(self.id), last_attempt_at=now)
        task.foundation.jobs.dead_letter(entry)
