"""`esf schedules …` from the command line (SQLite store, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esf.cli import main


@pytest.fixture
def cli(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ESF_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ESF_BROKER_URL", "memory://")
    monkeypatch.setenv("ESF_JOBS_QUEUES", "default,other")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--app", "tests.beat.app:make", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_schedules_can_be_added_listed_disabled_enabled_and_removed(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("schedules", "add", "nightly", "--job", "b.other", "--cron", "0 3 * * *",
                       "--kwargs", '{"label": "n"}', "--queue", "other")
    assert code == 0 and out.startswith("added nightly: next run ")
    code, out, _ = cli("schedules", "add", "fast", "--job", "b.tick", "--every", "5", "--args", "[1]", "--json")
    assert code == 0 and json.loads(out)["every"] == 5.0
    code, out, _ = cli("schedules", "list", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed["nightly"]["cron"] == "0 3 * * *" and listed["nightly"]["kwargs"] == {"label": "n"}
    assert listed["nightly"]["next_run_at"].endswith("03:00:00+00:00")
    assert listed["fast"]["args"] == [1] and listed["fast"]["enabled"] is True
    assert cli("schedules", "disable", "fast")[0] == 0
    code, out, _ = cli("schedules", "list")
    assert "fast  job=b.tick every=5s disabled" in out and "nightly  job=b.other cron='0 3 * * *' enabled" in out
    assert cli("schedules", "enable", "fast")[0] == 0
    code, out, _ = cli("schedules", "update", "fast", "--cron", "*/10 * * * *", "--args", "[2]", "--json")
    assert code == 0 and json.loads(out)["cron"] == "*/10 * * * *" and json.loads(out)["every"] is None
    assert json.loads(out)["args"] == [2]
    code, _, err = cli("schedules", "update", "fast", "--every", "0")
    assert code == 1 and "[validation_failed]" in err
    assert cli("schedules", "remove", "fast")[0] == 0
    code, out, _ = cli("schedules", "list", "--json")
    assert [s["name"] for s in json.loads(out)] == ["nightly"]


@pytest.mark.parametrize(
    ("argv", "code_text"),
    [
        (["--job", "no.such", "--every", "5"], "unknown_job"),
        (["--job", "b.tick", "--every", "5", "--queue", "nowhere"], "unknown_queue"),
        (["--job", "b.tick", "--every", "5", "--args", "[1,"], "validation_failed"),
        (["--job", "b.tick", "--every", "-5"], "validation_failed"),
        (["--job", "b.tick", "--cron", "* * * *"], "validation_failed"),
        (["--job", "b.tick", "--cron", "0 25 * * *"], "validation_failed"),
    ],
)
def test_bad_input_is_refused_with_its_error_code_and_nothing_is_stored(cli, argv: list[str],  # type: ignore[no-untyped-def]
                                                                        code_text: str) -> None:
    code, _, err = cli("schedules", "add", "bad", *argv)
    assert code == 1 and f"[{code_text}]" in err
    assert json.loads(cli("schedules", "list", "--json")[1]) == []


def test_unknown_schedules_and_a_non_list_args_are_reported(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("schedules", "remove", "ghost")
    assert code == 1 and "[not_found]" in err
    code, _, err = cli("schedules", "add", "x", "--job", "b.tick", "--every", "5", "--args", '{"a": 1}')
    assert code == 2 and "--args must be a JSON list" in err


def test_a_job_declared_only_by_the_workers_can_be_scheduled_with_no_job_check(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("schedules", "add", "remote", "--job", "workers.only", "--every", "5")
    assert code == 1 and "[unknown_job]" in err
    code, out, _ = cli("schedules", "add", "remote", "--job", "workers.only", "--every", "5", "--no-job-check")
    assert code == 0 and out.startswith("added remote")
