"""``esf config …``: handler logic run against an explicitly built service."""

from __future__ import annotations

import io
import json
import threading

import pytest

from esf import Secret
from esf.cli import _config as cli
from esf.cli import build_parser


def run(svc, argv, capsys, stdin=None, monkeypatch=None):
    args = build_parser().parse_args(["config", *argv])
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    runner = getattr(cli, f"run_{argv[0]}")
    code = runner(svc, args)
    return code, capsys.readouterr().out


@pytest.fixture
def svc(make_service):
    return make_service(node_id="cli-node")


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_set_parses_json_values_and_falls_back_to_strings(svc, capsys):
    assert run(svc, ["set", "billing.retries", "7"], capsys) == (0, "version 1\n")
    run(svc, ["set", "billing.name", "not json"], capsys)
    run(svc, ["set", "billing.flags", '{"a": [1, true]}'], capsys)
    assert svc.get("billing.retries") == 7 and svc.get("billing.name") == "not json"
    assert svc.get("billing.flags") == {"a": (1, True)}
    assert svc.history(limit=1)[0].actor.startswith("cli")


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_get_prints_plain_values_flattened_trees_and_json(svc, capsys):
    svc.update_batch({"a.b": 1, "a.c": "text", "s": Secret("hidden")})
    assert run(svc, ["get", "a.c"], capsys)[1] == "text\n"
    assert run(svc, ["get", "a"], capsys)[1] == 'a.b = 1\na.c = "text"\n'
    out = run(svc, ["get", "--json"], capsys)[1]
    assert json.loads(out) == {"a": {"b": 1, "c": "text"}, "s": "**********"}
    assert "hidden" not in out


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_batch_reads_a_json_object_from_stdin_or_a_file(svc, capsys, monkeypatch, tmp_path):
    assert run(svc, ["batch", "-"], capsys, stdin='{"x": 1, "y": {"z": 2}}', monkeypatch=monkeypatch)[1] == (
        "version 1\n"
    )
    path = tmp_path / "batch.json"
    path.write_text('{"x": 5}')
    run(svc, ["batch", str(path), "--expected-version", "1"], capsys)
    assert svc.get() == {"x": 5, "y": {"z": 2}}
    from esf.errors import ValidationError

    with pytest.raises(ValidationError):
        run(svc, ["batch", "-"], capsys, stdin="[1, 2]", monkeypatch=monkeypatch)


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_history_diff_and_rollback(svc, capsys):
    svc.update("a", 1, actor="alice")
    svc.update("a", 2, actor="bob")
    out = run(svc, ["history"], capsys)[1]
    assert out.splitlines()[0].split()[0] == "2" and "bob" in out and "a: 1 -> 2" in out
    assert run(svc, ["diff", "1", "2"], capsys)[1] == "a: 1 -> 2\n"
    assert json.loads(run(svc, ["diff", "0", "1", "--json"], capsys)[1]) == [{"path": "a", "new": 1}]
    assert run(svc, ["rollback", "1"], capsys)[1] == "version 3 (= version 1)\n"
    assert svc.get("a") == 1


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_nodes_and_health(svc, capsys):
    svc.update("a", 1)
    from .conftest import eventually

    eventually(lambda: svc.nodes() and svc.nodes()[0].version == 1)
    out = run(svc, ["nodes"], capsys)[1]
    assert out.startswith("cli-node") and "version 1" in out
    assert json.loads(run(svc, ["nodes", "--json"], capsys)[1])[0]["node_id"] == "cli-node"
    code, out = run(svc, ["health"], capsys)
    assert code == 0 and out.startswith("ok")


def test_watch_prints_each_new_version_until_count(make_service, capsys):
    watcher = make_service()
    writer = make_service()
    args = build_parser().parse_args(["config", "watch", "--count", "2", "--timeout", "60s"])
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", cli.run_watch(watcher, args)))
    thread.start()
    from .conftest import eventually

    eventually(lambda: watcher._subscribers, what="watch subscribed")
    writer.update("a", 1)
    writer.update("a", 2)
    thread.join(timeout=60)
    out = capsys.readouterr().out
    assert result["code"] == 0
    assert "version 1\n  a: (absent) -> 1\nversion 2\n  a: 1 -> 2\n" in out


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_watch_stops_at_its_timeout(svc, capsys):
    args = build_parser().parse_args(["config", "watch", "--timeout", "0.2s"])
    assert cli.run_watch(svc, args) == 0


def test_the_config_command_is_registered():
    args = build_parser().parse_args(["config", "get", "a.b", "--json"])
    assert args.path == "a.b" and args.json and callable(args.handler)


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_set_secret_stores_a_secret_that_is_never_printed(svc, capsys):
    run(svc, ["set", "db.password", "hunter2", "--secret"], capsys)
    assert svc.get("db.password").reveal() == "hunter2"
    out = run(svc, ["get", "db"], capsys)[1] + run(svc, ["history"], capsys)[1]
    assert "hunter2" not in out and "**********" in out
