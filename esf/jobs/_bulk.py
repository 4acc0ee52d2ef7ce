"""Publishing many job messages at once (``Job.enqueue_many``).

One message at a time, a producer waits for the broker once per job: a Redis
round trip, or on RabbitMQ a publisher confirm from the quorum queue (written to
disk before it is acknowledged). A batch pays that wait once:

- Redis: kombu's publish batch, the ``LPUSH``es of a batch in one pipeline. It runs
  on a connection of its own without ``retry_on_timeout``, so a pipeline that timed
  out is reported instead of replayed.
- RabbitMQ: the messages of a batch are published on a fresh channel in confirm
  mode without waiting, then the broker's acknowledgements (``basic.ack``, possibly
  ``multiple``) are collected; a ``basic.nack`` names the refused messages.
- The embedded broker: one producer for the whole batch (its writes are local).

A batch that fails raises :class:`BatchNotSent` with the ids the broker confirmed
and the ids whose delivery is uncertain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BatchNotSent
from ..lifecycle import track_fork

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection

    from ._task import EsfTask

log = logging.getLogger("esf.jobs")

#: Connections kept for batches, per process.
POOL_LIMIT = 4


@dataclass(slots=True)
class Outgoing:
    """One message of a batch: the task and ``apply_async``'s arguments."""

    task: EsfTask
    job_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]

    def send(self, producer: Any) -> None:
        self.task.apply_async(self.args, self.kwargs, task_id=self.job_id, producer=producer, retry=False,
                              **self.options)


class BatchPublisher:
    """Publishes batches of job messages on the Foundation's broker (see the module docstring)."""

    def __init__(self, app: Celery, kind: str, confirm_timeout_s: float = 30.0) -> None:
        self._app = app
        self._kind = kind
        self._confirm_timeout_s = confirm_timeout_s
        self._lock = threading.Lock()
        self._pool: Any = None
        track_fork(self)

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): the parent's connections stay the parent's."""
        self._lock = threading.Lock()
        self._pool = None

    def _connections(self) -> Any:
        with self._lock:
            if self._pool is None:
                options = {"retry_on_timeout": False} if self._kind == "redis" else {}
                conn: Connection = self._app.connection_for_write(transport_options=options)
                self._pool = conn.Pool(limit=POOL_LIMIT)
            return self._pool

    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Send ``batch``; returns once the broker has every message. Raises BatchNotSent."""
        if not batch:
            return
        try:
            with self._connections().acquire(block=True, timeout=self._confirm_timeout_s) as conn:
                try:
                    conn.ensure_connection(max_retries=1)
                except Exception as exc:  # nothing was published
                    raise _not_sent(batch, exc, reached=False) from exc
                if self._kind == "amqp":
                    self._publish_confirmed(conn, batch)
                else:
                    self._publish_pipelined(conn, batch)
        except BatchNotSent:
            raise
        except Exception as exc:
            raise _not_sent(batch, exc) from exc

    def _publish_pipelined(self, conn: Connection, batch: Sequence[Outgoing]) -> None:
        producer = self._app.amqp.Producer(conn, auto_declare=False)
        # kombu buffers the commands of the whole batch and executes them once on exit.
        with producer.batch(max_size=max(1, len(batch) * 2)):
            for out in batch:
                out.send(producer)

    def _publish_confirmed(self, conn: Connection, batch: Sequence[Outgoing]) -> None:
        from amqp import spec

        channel = conn.channel()
        try:
            channel.confirm_select()
            # Publish without waiting for each confirm (py-amqp's confirm mode waits per message).
            channel._confirm_selected = True
            channel.basic_publish = channel._basic_publish
            confirms = _Confirms(len(batch))
            channel.events["basic_ack"].add(confirms.ack)
            channel.events["basic_nack"].add(confirms.nack)
            producer = self._app.amqp.Producer(channel, auto_declare=False)
            for out in batch:
                out.send(producer)
            deadline = time.monotonic() + self._confirm_timeout_s
            while not confirms.complete:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no publisher confirm within {self._confirm_timeout_s:.0f} s")
                channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=remaining)
            if confirms.refused:
                refused = [batch[tag - 1].job_id for tag in sorted(confirms.refused)]
                raise BatchNotSent(
                    f"the broker refused {len(refused)} of {len(batch)} jobs (basic.nack: a full queue or a "
                    "broker-side limit); the others were sent",
                    sent=[o.job_id for i, o in enumerate(batch, 1) if i not in confirms.refused],
                    uncertain=[], refused=refused, not_sent=[],
                )
        finally:
            try:
                channel.close()
            except Exception as exc:  # the connection is going away: the pool replaces it
                log.debug("closing a batch channel failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.force_close_all()
            self._pool = None


class _Confirms:
    """Publisher confirms of one channel's messages, delivery tags 1..n."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._settled = [False] * (n + 1)
        self._floor = 0  # every tag up to here is settled
        self._count = 0
        self.refused: set[int] = set()

    @property
    def complete(self) -> bool:
        return self._count >= self.n

    def ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, refused=False)

    def nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, refused=True)

    def _settle(self, tag: int, multiple: bool, *, refused: bool) -> None:
        tags = range(self._floor + 1, min(tag, self.n) + 1) if multiple else (tag,)
        for t in tags:
            if 0 < t <= self.n and not self._settled[t]:
                self._settled[t] = True
                self._count += 1
                if refused:
                    self.refused.add(t)
        while self._floor < self.n and self._settled[self._floor + 1]:
            self._floor += 1


def _not_sent(batch: Sequence[Outgoing], exc: BaseException, *, reached: bool = True) -> BatchNotSent:
    ids = [o.job_id for o in batch]
    if not reached:
        return BatchNotSent(
            f"cannot reach the broker ({type(exc).__name__}: {exc}); none of a batch of {len(batch)} jobs was sent",
            sent=[], uncertain=[], refused=[], not_sent=ids,
        )
    return BatchNotSent(
        f"a batch of {len(batch)} jobs could not be confirmed by the broker ({type(exc).__name__}: {exc}); "
        "they may or may not have been queued",
        sent=[], uncertain=ids, refused=[], not_sent=[],
    )
