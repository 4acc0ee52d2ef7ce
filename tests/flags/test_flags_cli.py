"""``esf flags …`` end to end: the real command line in subprocesses, on the embedded (SQLite) configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def esf(data_dir, *argv, stdin=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    env.update({"ESF_DATA_DIR": str(data_dir), "ESF_TELEMETRY_ENABLED": "false", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "esf.cli", "flags", *argv], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_flags_are_written_listed_evaluated_and_killed_from_the_command_line(tmp_path):
    # Given a flag definition in a file
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"description": "new checkout", "rules": [
        {"if": {"attr": "country", "op": "in", "value": ["FR"]}, "serve": {"variant": "on"}}],
        "serve": {"variant": "off"}}))
    # When it is set, then listed, shown and evaluated
    code, out, _ = esf(tmp_path, "set", "checkout", "--file", str(rule))
    assert code == 0 and "configuration version 1" in out
    code, out, _ = esf(tmp_path, "list")
    assert code == 0 and out.split()[:2] == ["checkout", "on"]
    assert json.loads(esf(tmp_path, "show", "checkout")[1])["description"] == "new checkout"
    code, out, _ = esf(tmp_path, "eval", "checkout", "--context", '{"key": "u1", "country": "FR"}', "--json")
    # Then the answer names the rule that matched
    assert code == 0 and json.loads(out) == {"flag": "checkout", "value": True, "variant": "on",
                                                  "reason": "rule_match", "rule": 0, "error": None}
    # When it is killed, the evaluation says so; a context that cannot be answered exits 1 and says why
    assert esf(tmp_path, "kill", "checkout")[0] == 0
    assert "reason=kill_switch" in esf(tmp_path, "eval", "checkout", "--context", '{"key": "u1"}')[1]
    assert esf(tmp_path, "enable", "checkout")[0] == 0
    code, out, _ = esf(tmp_path, "eval", "checkout", "--context", '{"key": "u1"}')
    assert code == 1 and "reason=error" in out and "'country' is missing" in out


def test_an_invalid_definition_from_the_command_line_is_refused_with_its_code_and_nothing_written(tmp_path):
    # Given a definition with an unknown operator, read from stdin
    bad = json.dumps({"rules": [{"if": {"attr": "age", "op": "older", "value": 3}, "serve": {"variant": "on"}}]})
    # When it is set
    code, _, err = esf(tmp_path, "set", "checkout", "--file", "-", stdin=bad)
    # Then the command fails with the error code and the rule named, and there is no flag
    assert code == 1 and "[validation_failed]" in err and "rules[0].if.op" in err
    assert esf(tmp_path, "list")[1].strip() == "no flags"
    code, _, err = esf(tmp_path, "kill", "nope")
    assert code == 1 and "[not_found]" in err


def test_list_marks_definitions_that_do_not_compile(tmp_path, make_flags, capsys):
    # Given a store holding a flag that is not even an object (written without the flag validator) and a good one
    import argparse

    from esf.plugins.sqlite_config import SqliteConfigStore

    from esf.cli import _flags as cli
    from esf.config import ConfigService

    from .conftest import FAST

    config = ConfigService(SqliteConfigStore(str(tmp_path / "c.sqlite")), settings=FAST, data_dir=tmp_path / "n")
    try:
        config.update_batch({"flags.broken": 3, "flags.fine": {"enabled": False}})
        # When the flags are listed
        assert cli.run_list(make_flags(config), argparse.Namespace(json=True)) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        # Then the broken one is listed as invalid, and the good one with its state
        assert rows["broken"]["valid"] is False and rows["fine"] == {
            "name": "fine", "state": "off", "variants": ["on", "off"], "rules": 0, "valid": True, "description": ""}
    finally:
        config.close()
