"""Bad input at every door: a property-based sweep of the public facade and the CLI.

Every malformed name, path, payload, size or encoding must end in an ``esf.errors``
exception with a stable ``code`` (or, on the command line, a non-zero exit with one
line on stderr and no traceback), and a refused call must leave its store unchanged.
The embedded default (SQLite under a temporary ``data_dir``) holds every store.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import esf
from esf.cli import main as cli_main
from esf.errors import EsfError, SerializationError, UnknownSubscription, ValidationError
from esf.foundation import Foundation
from esf.hooks import JobHooks

ROOT = Path(__file__).resolve().parents[1]

# A failing example may be a 100 kB string: hypothesis warns about its repr, which must not hide the failure.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

SWEEP = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Sent(JobHooks):
    """Counts the jobs the broker took (``after_enqueue``)."""

    def __init__(self) -> None:
        self.count = 0

    def after_enqueue(self, ctx: Any) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def sent() -> Sent:
    return Sent()


@pytest.fixture(scope="module")
def fnd(tmp_path_factory: pytest.TempPathFactory, sent: Sent) -> Iterator[Foundation]:
    data_dir = tmp_path_factory.mktemp("bad-input")
    f = Foundation(esf.Settings(data_dir=str(data_dir)), hooks=[sent])

    @f.job(name="bad.echo", retries=0)
    def echo(*args: object, **kwargs: object) -> None:
        return None

    f.config.update("app.kept", {"v": 1})
    f.cache.put("kept", {"v": 1})
    f.events.append(esf.Event(type="bad.seed", data={"v": 1}, stream_id="seed-1"))
    try:
        yield f
    finally:
        f.close()


# -- strategies --------------------------------------------------------------------

SURROGATES = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3)
CONTROL = st.text(alphabet=st.characters(categories=["Cc"]), min_size=1, max_size=3)


def _nest(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


#: Strings no name, path or key may be.
bad_text = st.one_of(
    st.just(""),
    st.tuples(st.text(max_size=8), CONTROL, st.text(max_size=8)).map("".join),
    st.tuples(st.text(max_size=8), SURROGATES, st.text(max_size=8)).map("".join),
    st.integers(min_value=100_000, max_value=400_000).map(lambda n: "n" * n),
)
#: Values that are not strings at all.
non_text = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=8),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                         max_size=2))
bad_name = st.one_of(bad_text, non_text)
#: Values that JSON cannot carry (as ESF means it: no NaN, bytes, sets, dates, objects, odd keys, lone
#: surrogates, nesting past 64 levels).
not_json = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.binary(min_size=1, max_size=8),
    st.sets(st.integers(), min_size=1, max_size=2),
    st.datetimes(),
    st.builds(object),
    SURROGATES,
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.dictionaries(SURROGATES, st.integers(), min_size=1, max_size=1),
)


def _anywhere(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``leaf`` at the top, inside a list or inside an object."""
    return st.one_of(leaf, leaf.map(lambda v: [1, "ok", v]), leaf.map(lambda v: {"ok": 1, "bad": v}))


#: Jobs, configuration, flags and the cache take JSON nested at most 64 levels deep.
bad_value = _anywhere(st.one_of(not_json, st.integers(min_value=65, max_value=5_000).map(_nest)))
#: Events take deeper documents, up to what the interpreter can walk (refused past it, never a crash).
bad_event_value = _anywhere(st.one_of(not_json, st.integers(min_value=2_000, max_value=20_000).map(_nest)))


def refused(call: Callable[[], Any], *kinds: type[EsfError]) -> EsfError:
    """Run ``call``; it must raise one of ``kinds`` (an ``EsfError`` by default) with a stable code."""
    try:
        call()
    except EsfError as exc:
        assert isinstance(exc, kinds or (EsfError,)), f"{type(exc).__name__}: {exc}"
        assert isinstance(exc.code, str) and exc.code and exc.code != "esf_error"
        return exc
    raise AssertionError("the call was accepted")


# -- jobs --------------------------------------------------------------------------


@SWEEP
@given(value=bad_value)
def test_a_job_with_arguments_json_cannot_carry_is_refused_and_nothing_is_sent(
        fnd: Foundation, sent: Sent, value: Any) -> None:
    before = sent.count
    refused(lambda: fnd.jobs.get("bad.echo").enqueue(value), ValidationError)
    refused(lambda: fnd.jobs.get("bad.echo").enqueue(x=value), ValidationError)
    assert sent.count == before


@SWEEP
@given(name=bad_name)
def test_a_malformed_job_name_is_an_unknown_job(fnd: Foundation, sent: Sent, name: Any) -> None:
    before = sent.count
    refused(lambda: fnd.jobs.enqueue(name))
    assert sent.count == before


@SWEEP
@given(value=bad_value, deadline=st.one_of(st.floats(max_value=0), st.sampled_from([math.nan, math.inf, "5", None])),
       min_results=st.one_of(st.integers(max_value=0), st.integers(min_value=3), st.sampled_from([1.5, "1", True])))
def test_a_gather_with_bad_arguments_deadline_or_min_results_is_refused_and_nothing_is_sent(
        fnd: Foundation, sent: Sent, value: Any, deadline: Any, min_results: Any) -> None:
    before = sent.count
    echo = fnd.jobs.get("bad.echo")
    refused(lambda: fnd.gather([echo.s(1), (echo, [value])], then=echo, deadline=10), ValidationError)
    refused(lambda: fnd.gather([echo.s(1), echo.s(2)], then=echo, deadline=deadline), ValidationError)
    refused(lambda: fnd.gather([echo.s(1), echo.s(2)], then=echo, deadline=10, min_results=min_results),
            ValidationError)
    assert sent.count == before


# -- events ------------------------------------------------------------------------


@SWEEP
@given(type_=bad_name, stream=bad_name, data=bad_event_value)
def test_a_malformed_event_is_refused_and_the_store_is_unchanged(
        fnd: Foundation, type_: Any, stream: Any, data: Any) -> None:
    head = fnd.events.head()
    refused(lambda: fnd.events.append(esf.Event(type=type_, data={})), ValidationError)
    if stream is not None:
        refused(lambda: fnd.events.append(esf.Event(type="bad.ok", data={}, stream_id=stream)), ValidationError)
    refused(lambda: fnd.events.append(esf.Event(type="bad.ok", data={"v": data})), ValidationError)
    refused(lambda: fnd.events.append(esf.Event(type="bad.ok", data={}, metadata={"m": data})), ValidationError)
    # a good event next to a bad one: the batch is refused whole
    refused(lambda: fnd.events.append([esf.Event(type="bad.ok", data={}),
                                       esf.Event(type="bad.ok", data={"v": data})]), ValidationError)
    assert fnd.events.head() == head


@SWEEP
@given(events=non_text)
def test_append_refuses_what_is_not_events(fnd: Foundation, events: Any) -> None:
    head = fnd.events.head()
    refused(lambda: fnd.events.append(events), ValidationError)
    assert fnd.events.head() == head


@SWEEP
@given(name=bad_name, value=not_json, limit=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=3)))
def test_a_malformed_query_is_refused(fnd: Foundation, name: Any, value: Any, limit: Any) -> None:
    from esf import Q, Query

    refused(lambda: fnd.events.query(Query(filter=Q.data(name) == 1)), ValidationError)
    if not isinstance(name, str) and name is not None:
        refused(lambda: fnd.events.query(Query(filter=Q.type(name))), ValidationError)
    refused(lambda: fnd.events.query(Query(filter=Q.data("v") == value)), ValidationError)
    refused(lambda: fnd.events.query(Query(limit=limit)), ValidationError)
    if name is not None:  # query(None) is every event
        refused(lambda: fnd.events.query(name), ValidationError)


# -- configuration and flags -------------------------------------------------------


@SWEEP
@given(path=bad_name, value=bad_value)
def test_a_bad_configuration_path_or_value_is_refused_and_no_part_of_the_batch_is_written(
        fnd: Foundation, path: Any, value: Any) -> None:
    version = fnd.config.version
    refused(lambda: fnd.config.update(path, 1), ValidationError)
    refused(lambda: fnd.config.update("app.value", value), ValidationError)
    refused(lambda: fnd.config.update_batch({"app.kept": {"v": 2}, "app.value": value}), ValidationError)
    if isinstance(path, str):
        refused(lambda: fnd.config.update_batch({"app.kept": {"v": 2}, path: 1}), ValidationError)
    assert fnd.config.version == version
    assert fnd.config.get("app.kept") == {"v": 1}


@SWEEP
@given(name=bad_name, definition=st.one_of(non_text.filter(lambda v: not isinstance(v, dict)), bad_value))
def test_a_bad_flag_name_or_definition_is_refused_and_evaluation_still_answers_the_default(
        fnd: Foundation, name: Any, definition: Any) -> None:
    version = fnd.config.version
    refused(lambda: fnd.flags.set(name, {"enabled": True}), ValidationError)
    refused(lambda: fnd.flags.set("checkout", definition), ValidationError)
    assert fnd.config.version == version
    # evaluation never raises: a malformed name answers the caller's default
    assert fnd.flags.enabled(name, {"key": "u1"}, default=True) is True


# -- cache, secrets, aggregates, subscriptions -------------------------------------


@SWEEP
@given(key=bad_name, value=bad_value, ttl=st.one_of(st.sampled_from([0, -1, math.nan, math.inf, "1", True])))
def test_a_bad_cache_key_value_or_ttl_is_refused_and_nothing_is_stored(
        fnd: Foundation, key: Any, value: Any, ttl: Any) -> None:
    refused(lambda: fnd.cache.put(key, 1), ValidationError)
    refused(lambda: fnd.cache.put("kept", value), ValidationError)
    refused(lambda: fnd.cache.put("kept", 2, ttl=ttl), ValidationError)
    refused(lambda: fnd.cache.get(key), ValidationError)
    assert fnd.cache.get("kept") == {"v": 1}


@SWEEP
@given(path=bad_name)
def test_a_malformed_secret_path_is_refused(fnd: Foundation, path: Any) -> None:
    refused(lambda: fnd.secrets.get(path))


@SWEEP
@given(ident=bad_name)
def test_a_malformed_aggregate_id_is_refused(fnd: Foundation, ident: Any) -> None:
    class Order(esf.Aggregate):
        pass

    refused(lambda: fnd.aggregates.load(Order, ident))


@SWEEP
@given(name=bad_name)
def test_a_malformed_subscription_name_is_unknown(fnd: Foundation, name: Any) -> None:
    refused(lambda: fnd.subscriptions.get(name), UnknownSubscription)


def test_the_shared_json_check_refuses_a_lone_surrogate_where_utf8_cannot_carry_it() -> None:
    from esf._json import check_json

    check_json({"name": "Zoë", "tags": ["ü", "\u2603"]})
    for value in ("\ud800", ["ok", "a\udcff"], {"\udc80": 1}, {"a": {"b": "x\ud834"}}):
        with pytest.raises(SerializationError):
            check_json(value)


# -- the command line ----------------------------------------------------------------

CLI_CASES: list[list[str]] = [
    ["config", "set", "app..x", "1"],
    ["config", "set", "app.x", "NaN"],
    ["config", "set", "app.x", "[" * 5000 + "]" * 5000],
    ["config", "set", "app.\x00x", "1"],
    ["events", "append", "Bad Type!", "--data", "{}"],
    ["events", "append", "bad.ok", "--data", "[1, 2]"],
    ["events", "append", "bad.ok", "--data", '{"v": Infinity}'],
    ["events", "append", "bad.ok", "--data", '{"v": "a\\u0000b"}'],
    ["events", "append", "bad.ok", "--data", '{"v": "\\ud800"}'],
    ["events", "append", "bad.ok", "--stream", "x" * 10_000, "--data", "{}"],
    ["jobs", "enqueue", "no.such.job"],
    ["jobs", "enqueue", "bad.echo", "--args", "{not json"],
    ["jobs", "enqueue", "bad.echo", "--args", '{"a": 1}'],
    ["jobs", "enqueue", "bad.echo", "--args", "[NaN]"],
    ["cache", "get", "\x01"],
    ["flags", "eval", "checkout", "--context", "[1]"],
]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ESF_DATA_DIR", str(tmp_path / "esf"))
    return tmp_path


@pytest.mark.parametrize("argv", CLI_CASES, ids=lambda a: " ".join(a)[:40])
def test_the_cli_refuses_bad_input_with_one_line_and_a_non_zero_exit(
        cli_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code = _cli(argv)
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if lines[0].startswith("usage:"):  # argparse: its usage line, then the error
        assert lines[-1].startswith("esf") and "error:" in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("esf: "), err
    # and nothing was written
    after = Foundation(esf.Settings(data_dir=str(cli_env / "esf")))
    try:
        assert after.config.get("app", default={}) == {}
        assert after.events.head() == 0
    finally:
        after.close()


def _cli(argv: list[str]) -> int | None:
    try:
        return cli_main(["--app", "tests.test_bad_input:cli_app", *argv])
    except SystemExit as exc:  # argparse's usage errors exit 2
        return exc.code if isinstance(exc.code, int) else 1


def cli_app() -> Foundation:
    f = Foundation(esf.Settings.from_env())

    @f.job(name="bad.echo", retries=0)
    def echo(*args: object, **kwargs: object) -> None:
        return None

    return f


@pytest.mark.parametrize("argv", [
    [b"config", b"set", b"app.x", b'"\xff\xfe"'],
    [b"events", b"append", b"bad.ok", b"--data", b'{"v": "\xc3\x28"}'],
    [b"config", b"set", b"app.\xff", b"1"],
], ids=["config value", "event data", "config path"])
def test_non_utf8_bytes_on_the_command_line_end_in_one_line_and_a_non_zero_exit(
        tmp_path: Path, argv: list[bytes]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    env.update({"ESF_DATA_DIR": str(tmp_path / "esf"), "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"})
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"esf.cli", *argv], cwd=tmp_path, env=env,
                          capture_output=True, timeout=120)
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0, (done.stdout, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("esf: "), err
    # and nothing was written
    listed = subprocess.run([sys.executable, "-m", "esf.cli", "config", "get", "app"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "app.x" not in listed.stdout
