"""A poison event goes to the DLQ with its position and id; the subscription goes on; the replay delivers it."""

from __future__ import annotations

from esf import Event
from tests.jobs.harness import wait_for

from .conftest import Env


def test_a_poison_event_is_dead_lettered_with_its_position_the_stream_goes_on_and_the_replay_delivers_it(
        subs_env: Env) -> None:
    # Given a worker and events of one stream, the second of which its handler can never handle
    fnd = subs_env.foundation()
    subs_env.worker()
    stored = fnd.events.append([
        Event("order.paid", {"order": 1, "total": 150}, stream_id="order-1"),
        Event("order.paid", {"order": 2, "total": 150, "poison": True}, stream_id="order-2"),
        Event("order.paid", {"order": 3, "total": 150}, stream_id="order-3"),
    ])
    poison = stored[1]
    # When its retries are exhausted
    queue = fnd.subscriptions.get("orders").queue
    entries = wait_for(lambda: fnd.jobs.dlq.list(queue), timeout=60, message="the dead letter")
    # Then the DLQ entry names the event's position and id
    (entry,) = entries
    assert entry.job == "esf.subscription.orders"
    assert poison.position in entry.args[1]
    assert f"position {poison.position}" in (entry.traceback or "")
    assert poison.event_id in (entry.traceback or "")
    # And the subscription goes on: later events, of the same partition too, are delivered
    later = fnd.events.append(Event("order.paid", {"order": 4, "total": 150}, stream_id="order-2"))
    wait_for(lambda: {stored[0].position, stored[2].position, later[0].position} <= set(subs_env.seen()),
             timeout=30, message="events after the poison one")
    status = wait_for(lambda: (s := fnd.subscriptions.status("orders")).dead == 1 and s, timeout=30,
                      message="the dead batch")
    assert status.dead_batches[0]["positions"] == [poison.position]
    assert f"position {poison.position}" in status.dead_batches[0]["error"]
    assert poison.position not in subs_env.seen()
    # When the handler is fixed and the entry replayed
    subs_env.redis.set(f"cured:{poison.position}", 1)
    fnd.jobs.dlq.replay([entry.id])
    # Then the event is delivered, the dead batch is gone and the checkpoint reaches the head
    wait_for(lambda: poison.position in subs_env.seen(), timeout=30, message="the replayed event")
    wait_for(lambda: (s := fnd.subscriptions.status("orders")).dead == 0 and s.checkpoint == s.head, timeout=30,
             message="the checkpoint after the replay")
    assert subs_env.seen().count(poison.position) == 1
