"""The `esf db` / `esf events` commands, run against an explicitly built store."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from esf.plugins.sqlalchemy_events.migrations import head_revision

from esf.cli import build_parser, main
from esf.cli._events import run_append, run_get, run_prune, run_spool_list, run_tail, run_timeline
from esf.errors import NotFound, ValidationError
from esf.events import Event


def test_db_upgrade_migrates_the_database_given_on_the_command_line(db_url, capsys):
    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert f"is at revision {head_revision()}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", db_url]) == 0


def test_the_parser_knows_every_events_action():
    parser = build_parser()
    for argv in (
        ["events", "append", "a.b", "--data", "{}"],
        ["events", "get", str(uuid.uuid4())],
        ["events", "tail", "--type", "a.b", "--max-events", "1", "--timeout", "1"],
        ["events", "prune", "--older-than", "90d", "--type", "a.b"],
        ["events", "timeline", "c-1", "--json"],
        ["events", "spool", "list", "--json"],
        ["events", "spool", "retry", "3", "4", "--wait", "5"],
        ["events", "spool", "retry", "--all"],
    ):
        assert callable(parser.parse_args(argv).handler)


def test_append_then_get_prints_the_event(store):
    out = io.StringIO()
    eid = str(uuid.uuid4())
    run_append(store, "order.created", {"user_id": 123}, stream="order-1", correlation_id="c-1", event_id=eid, out=out)
    assert "#1" in out.getvalue() and "order.created" in out.getvalue() and "order-1@1" in out.getvalue()
    # appending it again says so
    again = io.StringIO()
    run_append(
        store, "order.created", {"user_id": 123}, stream="order-1", correlation_id="c-1", event_id=eid, out=again
    )
    assert "(already stored)" in again.getvalue()
    out = io.StringIO()
    run_get(store, eid, as_json=True, out=out)
    assert json.loads(out.getvalue())["data"] == {"user_id": 123}
    with pytest.raises(NotFound):
        run_get(store, str(uuid.uuid4()), out=io.StringIO())


def test_tail_prints_events_committed_after_it_started_filtered_by_type(store):
    # Given a store with an old event, and a tail that starts at the head
    store.append(Event("old.event"))
    out = io.StringIO()
    appended: list[int] = []

    def sleep(_: float) -> None:  # the first idle poll is when new events arrive
        if not appended:
            store.append([Event("a.b", {"i": 1}), Event("other.type"), Event("a.b", {"i": 2})])
            appended.append(1)

    # When it follows type a.b until two events were shown
    assert run_tail(store, types=["a.b"], max_events=2, as_json=True, out=out, sleep=sleep) == 0
    # Then it printed exactly the two new a.b events, as JSON lines
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["event_type"], d["data"]["i"]) for d in lines] == [("a.b", 1), ("a.b", 2)]


def test_tail_stops_at_its_timeout_when_nothing_happens(store):
    out = io.StringIO()
    assert run_tail(store, timeout_s=0.0, out=out, sleep=lambda _: None) == 0
    assert out.getvalue() == ""


def test_prune_parses_the_age_and_reports_the_count(store):
    out = io.StringIO()
    run_prune(store, "90d", types=["a.b"], out=out)
    assert out.getvalue().startswith("pruned 0 event(s) of type a.b older than 90d")
    with pytest.raises(ValidationError):
        run_prune(store, "ninety days", out=io.StringIO())


def test_timeline_prints_text_or_json(store):
    store.append([Event("order.created", {"id": 1}, correlation_id="c-7"), Event("order.paid", correlation_id="c-7")])
    out = io.StringIO()
    assert run_timeline(store, "c-7", out=out) == 0
    assert "Timeline of c-7" in out.getvalue() and "order.paid" in out.getvalue()
    out = io.StringIO()
    run_timeline(store, "c-7", as_json=True, out=out)
    assert [d["event_type"] for d in json.loads(out.getvalue())] == ["order.created", "order.paid"]
    assert run_timeline(store, "none", out=io.StringIO()) == 1


def test_spool_retry_needs_ids_or_all_but_not_both(capsys):
    # When retry is given neither ids nor --all, or both, then it fails before touching any store
    assert main(["events", "spool", "retry"]) == 1
    assert "give entry ids" in capsys.readouterr().err
    assert main(["events", "spool", "retry", "1", "--all"]) == 1
    assert "not both" in capsys.readouterr().err


def test_spool_list_on_a_store_without_a_spool_says_there_is_nothing(store):
    out = io.StringIO()
    assert run_spool_list(store, out=out) == 0
    assert out.getvalue() == "no quarantined spool entries\n"
    out = io.StringIO()
    assert run_spool_list(store, as_json=True, out=out) == 0
    assert json.loads(out.getvalue()) == []
