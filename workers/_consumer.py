"""The worker's message consumer: poison messages go to the dead-letter queue, not to /dev/null.

Celery acknowledges a message it cannot decode and rejects one that names an
unknown task or is malformed; on Redis both are simply lost. This consumer
first publishes the message (body kept as base64) to ``<queue>.dlq`` with the
reason, then lets Celery acknowledge it, so the worker keeps running and the
message can be inspected.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from esf.jobs._deadletter import poison_entry

log = logging.getLogger("esf.workers")


class EsfConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer with dead-lettering of poison messages."""

    def _dead_letter(self, message: Any, reason: str, exc: BaseException | None) -> None:
        foundation = getattr(self.app, "foundation", None)
        if foundation is None:
            return
        info = getattr(message, "delivery_info", None) or {}
        queue = str(info.get("routing_key") or foundation.settings.jobs.default_queue)
        if queue not in foundation.settings.jobs.all_queues:
            queue = foundation.settings.jobs.default_queue
        try:
            body = message.body
            entry = poison_entry(body, getattr(message, "headers", None), getattr(message, "content_type", None),
                                 queue, reason, exc)
            foundation.jobs.dead_letter(entry)
        except Exception:
            log.exception("could not dead-letter a %s message; it is left to the broker", reason)
            raise

    def _dead_letter_then_ack(self, message: Any, reason: str, exc: BaseException | None) -> None:
        """Dead-letter the message, then acknowledge it; if that fails, give it back to the broker."""
        try:
            self._dead_letter(message, reason, exc)
        except Exception:
            message.reject(requeue=True)
            return
        message.ack()

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self._dead_letter_then_ack(message, "undecodable", exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter_then_ack(message, "undecodable", None)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._dead_letter_then_ack(message, "unknown_job", exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._dead_letter_then_ack(message, "undecodable", exc)
