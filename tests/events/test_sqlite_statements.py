"""SQLite appends write a batch in multi-row statements, cut to the variable limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore, _append

from esf.events import Event


@pytest.mark.parametrize("limit", [999, 20, 1])
def test_versions_and_positions_are_right_whatever_the_statement_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      limit: int) -> None:
    # A limit of 999 variables gives 71 rows per insert; 20 gives one row (14 columns); 1, one row too.
    monkeypatch.setattr(_append, "_variable_limit", limit)
    store = SqlEventStore(f"sqlite:///{tmp_path}/events.db")
    try:
        # Given 40 streams that exist already, at version 2
        store.append([Event("s.seed", {"i": i}, stream_id=f"s-{i % 40}") for i in range(80)])
        # When a batch of 1,300 events touches those streams and 260 new ones
        text = "it's \"quoted\""
        batch = [Event("s.more", {"i": i, "text": text}, stream_id=f"s-{i % 300}") for i in range(1300)]
        result = store.append(batch)
        # Then every event got the next position and its stream's next version, in order
        stored = list(result)
        assert [e.position for e in stored] == list(range(81, 1381))
        seen: dict[str, int] = {f"s-{i}": 2 for i in range(40)}
        for e in stored:
            seen[e.stream_id] = seen.get(e.stream_id, 0) + 1
            assert e.stream_version == seen[e.stream_id]
        # And reads agree, as does the next append to an existing stream
        assert store.get(stored[-1].event_id).data == {"i": 1299, "text": text}
        again = store.append(Event("s.after", {}, stream_id="s-0"), expected_version=seen["s-0"])
        assert again[0].stream_version == seen["s-0"] + 1
    finally:
        store.close()
