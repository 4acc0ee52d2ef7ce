"""Asynchronous appends travel as esf.events.append jobs on the esf.events queue."""

from __future__ import annotations

import pytest

import esf
from esf.errors import SerializationError, ValidationError
from esf.foundation import Foundation

from .harness import Worker


def test_async_appends_are_written_by_a_worker_in_batches(fnd: Foundation, worker: Worker) -> None:
    # When many appends are made at once
    handles = [fnd.append_async(esf.Event("order.created", {"n": i}, correlation_id="async-1")) for i in range(40)]
    # Then each handle returns its stored event, with positions in call order
    stored = [h.wait(60)[0] for h in handles]
    assert [e.data["n"] for e in stored] == list(range(40))
    positions = [e.position for e in stored]
    assert positions == sorted(positions)
    # And they travelled in fewer jobs than calls
    assert len({h.job_id for h in handles}) < 40


def test_a_bad_async_append_fails_at_the_call_site(fnd: Foundation) -> None:
    with pytest.raises(SerializationError):
        fnd.append_async(esf.Event("order.created", {"when": object()}))
    with pytest.raises(ValidationError):
        fnd.append_async(esf.Event("bad type!", {}))
