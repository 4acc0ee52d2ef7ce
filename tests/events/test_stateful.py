"""Stateful property test: the SQLite store against an in-memory model (appends, retries, clashes, versions)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from esf.plugins.sqlalchemy_events import SqlEventStore
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from esf.errors import ConcurrencyConflict, DuplicateEventId, ValidationError
from esf.events import Event

STREAMS = ("s-a", "s-b", "s-c")


class EventStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = SqlEventStore(f"sqlite:///{Path(self.dir.name) / 'm.sqlite'}")
        self.order: list[str] = []  # event ids in position order
        self.content: dict[str, tuple[str, str, int]] = {}  # id -> (type, stream, value)
        self.streams: dict[str, list[str]] = {s: [] for s in STREAMS}

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    def _event(self, spec: tuple[int, str, int, str]) -> tuple[str, Event]:
        reuse, stream, value, kind = spec
        if reuse and self.order:
            eid = self.order[reuse % len(self.order)]
            etype, stream0, value0 = self.content[eid]
            if kind == "same":
                return eid, Event(etype, {"v": value0}, stream_id=stream0, event_id=eid)
            return eid, Event(etype, {"v": value0 + 1}, stream_id=stream0, event_id=eid)
        eid = str(uuid.uuid4())
        return eid, Event("t.x", {"v": value}, stream_id=stream, event_id=eid)

    @rule(
        specs=st.lists(
            st.tuples(
                st.integers(0, 5), st.sampled_from(STREAMS), st.integers(0, 3), st.sampled_from(["same", "other"])
            ),
            min_size=1,
            max_size=3,
        ),
        expected=st.one_of(st.none(), st.integers(-1, 1)),
    )
    def append(self, specs, expected) -> None:
        pairs = [self._event(s) for s in specs]
        events = [e for _, e in pairs]
        streams = {e.stream_id for e in events}
        expected_version = None
        if expected is not None and len(streams) == 1:
            expected_version = max(0, len(self.streams[next(iter(streams))]) + expected)
        # The model's verdict
        batch: dict[str, tuple[str, str, int]] = {}
        clash = False
        for eid, e in pairs:
            c = (e.type, e.stream_id or "", e.data["v"])
            if (eid in batch and batch[eid] != c) or (eid in self.content and self.content[eid] != c):
                clash = True
            batch.setdefault(eid, c)
        new = [eid for eid in batch if eid not in self.content]
        try:
            result = self.store.append(events, expected_version=expected_version)
        except DuplicateEventId:
            assert clash
            return
        except ConcurrencyConflict:
            assert not clash and new and expected_version != len(self.streams[next(iter(streams))])
            return
        except ValidationError:  # pragma: no cover - the rule never builds invalid events
            raise
        assert not clash
        if expected_version is not None and new:
            assert expected_version == len(self.streams[next(iter(streams))])
        for eid in new:
            self.content[eid] = batch[eid]
            self.order.append(eid)
            self.streams[batch[eid][1]].append(eid)
        assert [e.event_id for e in result] == [eid for eid, _ in pairs]
        assert result.already_stored == frozenset(batch) - set(new)

    @invariant()
    def positions_and_versions_match_the_model(self) -> None:
        stored = self.store.read_all(limit=10_000)
        assert [e.event_id for e in stored] == self.order
        assert [e.position for e in stored] == list(range(1, len(self.order) + 1))
        for stream, ids in self.streams.items():
            got = self.store.read_stream(stream)
            assert [e.event_id for e in got] == ids
            assert [e.stream_version for e in got] == list(range(1, len(ids) + 1))


EventStoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_the_store_behaves_like_its_model = EventStoreMachine.TestCase
