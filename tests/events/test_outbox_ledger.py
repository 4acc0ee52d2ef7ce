"""Transactional outbox and idempotency ledger, on both backends."""

from __future__ import annotations

import math
import threading

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import OutboxRelay, forget, once, outbox_put, recorded
from esf.plugins.sqlalchemy_events._schema import ledger
from sqlalchemy.orm import Session

from esf.errors import SerializationError, ValidationError
from esf.events import Event


def test_outbox_messages_are_dispatched_in_order_only_after_commit(store):
    # Given one committed transaction with two messages and one rolled back with a third
    with Session(store.engine) as s:
        outbox_put(s, "job", {"n": 1})
        outbox_put(s, "job", {"n": 2})
        s.commit()
    with Session(store.engine) as s:
        outbox_put(s, "job", {"n": 3})
        s.rollback()
    sent: list[tuple[str, dict]] = []
    relay = OutboxRelay(store.engine, lambda kind, payload: sent.append((kind, payload)), kind="job")
    # When the relay drains
    assert relay.drain(10) == 2
    # Then the committed messages went out in order, the rolled-back one never, and the outbox is empty
    assert sent == [("job", {"n": 1}), ("job", {"n": 2})]
    assert relay.drain(10) == 0
    assert relay.pending() == 0


def test_an_event_and_an_outbox_message_commit_together(store):
    with Session(store.engine) as s:
        store.append(Event("order.created", {"id": 1}), session=s)
        outbox_put(s, "job", {"name": "send_mail"})
        s.commit()
    assert store.head() == 1
    assert store.outbox_relay(lambda k, p: None, kind="job").drain() == 1


def test_a_failing_dispatch_keeps_the_failed_message_and_the_rest(store):
    with Session(store.engine) as s:
        for n in range(4):
            outbox_put(s, "job", {"n": n})
        s.commit()
    sent: list[int] = []

    def dispatch(kind: str, payload: dict) -> None:
        if payload["n"] == 2 and not sent.count(-1):
            sent.append(-1)
            raise ConnectionError("broker down")
        sent.append(payload["n"])

    relay = OutboxRelay(store.engine, dispatch, kind="job")
    # When dispatch fails on the third message
    with pytest.raises(ConnectionError):
        relay.drain(10)
    # Then the two before it are gone, and the next drain resumes at the failed one (at least once, in order)
    assert relay.pending() == 2
    assert relay.drain(10) == 2
    assert sent == [0, 1, -1, 2, 3]


def test_send_dispatches_the_given_rows_at_once_skips_those_sent_and_keeps_them_when_dispatch_fails(store):
    # Given four committed messages
    with Session(store.engine) as s:
        for n in range(4):
            outbox_put(s, "job", {"n": n})
        s.commit()
    with store.engine.connect() as conn:
        ids = [int(i) for (i,) in conn.execute(sa.text("SELECT id FROM esf_outbox ORDER BY id"))]
    sent: list[int] = []
    broker_down = [True]

    def dispatch(kind: str, payload: dict) -> None:
        if broker_down[0]:
            raise ConnectionError("broker down")
        sent.append(payload["n"])

    relay = OutboxRelay(store.engine, dispatch, kind="job")
    # When sending two of them fails at the broker
    with pytest.raises(ConnectionError):
        relay.send(ids[2:])
    # Then nothing was deleted
    assert relay.pending() == 4
    # When they are sent with the broker back, and sent again (a drain took them meanwhile)
    broker_down[0] = False
    assert relay.send(ids[2:]) == 2
    assert relay.send(ids[2:]) == 0
    # Then each went once, in id order, and the drain sends only the others
    assert sent == [2, 3]
    assert relay.drain(10) == 2
    assert sent == [2, 3, 0, 1]


def test_the_relay_can_run_in_the_background_until_stopped(store):
    got = threading.Event()
    relay = OutboxRelay(store.engine, lambda k, p: got.set(), kind="job")
    t = threading.Thread(target=relay.run, kwargs={"interval_s": 0.05})
    t.start()
    try:
        with Session(store.engine) as s:
            outbox_put(s, "job", {"x": 1})
            s.commit()
        assert got.wait(30)
    finally:
        relay.stop()
        t.join(30)
    assert not t.is_alive()


def test_two_relays_each_send_and_delete_only_the_rows_of_their_own_kind(store):
    # Given one transaction that writes rows of two kinds, interleaved
    with Session(store.engine) as s:
        for n in range(3):
            outbox_put(s, "job", {"n": n})
            outbox_put(s, "mail", {"n": n})
        s.commit()
    jobs: list[tuple[str, int]] = []
    mails: list[tuple[str, int]] = []
    job_relay = store.outbox_relay(lambda k, p: jobs.append((k, p["n"])), kind="job")
    mail_relay = OutboxRelay(store.engine, lambda k, p: mails.append((k, p["n"])), kind="mail")
    # When the job relay drains first
    assert job_relay.drain(100) == 3
    # Then it sent only its own rows, in order, and the other kind's rows are all still there
    assert jobs == [("job", 0), ("job", 1), ("job", 2)]
    assert mail_relay.pending() == 3 and job_relay.pending() == 0
    # And the mail relay then sends exactly its own rows, in order
    assert mail_relay.drain(100) == 3
    assert mails == [("mail", 0), ("mail", 1), ("mail", 2)]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM esf_outbox")).scalar_one() == 0


def test_a_relay_with_a_bad_kind_is_refused():
    with pytest.raises(ValidationError):
        OutboxRelay(None, lambda k, p: None, kind="")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        OutboxRelay(None, lambda k, p: None, kind="x" * 51)  # type: ignore[arg-type]


def test_outbox_payloads_are_validated():
    with pytest.raises(SerializationError):
        outbox_put(None, "job", {"x": math.nan})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        outbox_put(None, "", {})  # type: ignore[arg-type]


def test_the_ledger_lets_an_effect_commit_once_with_the_callers_transaction(store):
    effects: list[str] = []

    def handle(delivery: str) -> None:
        with Session(store.engine) as s:
            with store.once("charge:order-1", session=s, job_id=delivery) as first:
                if first:
                    store.append(Event("order.charged", {"delivery": delivery}), session=s)
                    effects.append(delivery)
            s.commit()

    # When the same job is delivered three times
    for delivery in ("d1", "d2", "d3"):
        handle(delivery)
    # Then the effect happened once, with the first delivery
    assert effects == ["d1"]
    assert [e.data["delivery"] for e in store.read_all()] == ["d1"]
    assert recorded(store.engine, "charge:order-1")


def test_a_rolled_back_effect_does_not_record_its_key(store):
    with Session(store.engine) as s, once(s, "k-1") as first:
        assert first
        s.rollback()
    assert not recorded(store.engine, "k-1")
    with Session(store.engine) as s:
        with once(s, "k-1") as first:
            assert first
        s.commit()
    assert recorded(store.engine, "k-1")


def test_once_with_an_engine_commits_on_success_and_not_on_error(store):
    with pytest.raises(RuntimeError), once(store.engine, "k-2") as first:
        assert first
        raise RuntimeError("effect failed")
    assert not recorded(store.engine, "k-2")
    with once(store.engine, "k-2", job_id="j-9") as first:
        assert first
    with once(store.engine, "k-2") as first:
        assert not first
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(ledger.c.job_id).where(ledger.c.key == "k-2")).scalar_one() == "j-9"
    assert forget(store.engine, "k-2")
    assert not recorded(store.engine, "k-2")


def test_ledger_keys_are_validated(store):
    with pytest.raises(ValidationError), once(store.engine, "") as _:
        pass
    with pytest.raises(ValidationError), once(store.engine, "k" * 401) as _:
        pass
