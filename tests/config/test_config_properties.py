"""Property-based tests: path handling, batch validation, and a stateful model of the service."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
from esf.plugins.sqlite_config import SqliteConfigStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esf.config import DELETE, ConfigService, parse_path, path_error
from esf.config._paths import freeze, leaf_diff, lookup, set_path, thaw_plain
from esf.errors import ValidationError

from .conftest import FAST

segments = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-]{0,10}\Z")
paths = st.lists(segments, min_size=1, max_size=4).map(".".join)
scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(segments, inner, max_size=3),
    max_leaves=8,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared machine: no timing
@given(paths)
def test_every_valid_path_round_trips_through_parse(path):
    assert path_error(path) is None
    assert ".".join(parse_path(path)) == path


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared machine: no timing
@given(st.text(max_size=40))
def test_parse_accepts_exactly_what_path_error_accepts(text):
    problem = path_error(text)
    if problem is None:
        assert parse_path(text)
    else:
        with pytest.raises(ValueError):
            parse_path(text)
        assert text == "" or "segment" in problem or "characters" in problem or "segments" in problem


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared machine: no timing
@given(st.lists(st.tuples(paths, json_values), max_size=6))
def test_set_then_lookup_returns_the_last_value_written(writes):
    tree: dict = {}
    for path, value in writes:
        set_path(tree, parse_path(path), copy.deepcopy(value))
    # The last write of each path is visible unless a later write replaced a parent or child.
    for i, (path, value) in enumerate(writes):
        later = [p for p, _ in writes[i + 1 :] if p == path or p.startswith(path + ".") or path.startswith(p + ".")]
        if not later:
            assert lookup(tree, parse_path(path)) == value


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared machine: no timing
@given(st.dictionaries(segments, json_values, max_size=4), st.dictionaries(segments, json_values, max_size=4))
def test_applying_a_leaf_diff_to_the_old_tree_gives_the_new_tree(old, new):
    tree = copy.deepcopy(old)
    for path, _, value in leaf_diff(old, new):
        set_path(tree, parse_path(path), value)
    assert leaf_diff(tree, new) == []


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared machine: no timing
@given(json_values)
def test_frozen_values_thaw_back_to_equal_json(value):
    assert thaw_plain(freeze(value)) == value


@pytest.fixture(scope="module")
def shared_service():
    directory = tempfile.mkdtemp()
    svc = ConfigService(SqliteConfigStore(Path(directory) / "c.sqlite"), settings=FAST, start=False)
    svc.register_schema(
        {
            "type": "object",
            "properties": {"typed": {"type": "object", "additionalProperties": {"type": "integer"}}},
        }
    )
    yield svc
    svc.close()
    shutil.rmtree(directory)


bad_paths = st.sampled_from(["", ".", "a..b", "1x", "a.b c", "ä", "a." * 40 + "a", "x" * 300])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    good=st.dictionaries(segments.map(lambda s: "free." + s), scalars, min_size=1, max_size=3),
    bad=st.one_of(
        bad_paths.map(lambda p: (p, 1)),
        segments.map(lambda s: ("typed." + s, "not an int")),
        segments.map(lambda s: ("free." + s + "_nan", float("nan"))),
    ),
)
def test_a_batch_with_any_invalid_change_changes_nothing_and_names_the_bad_path(shared_service, good, bad):
    svc = shared_service
    before_version, before = svc.version, thaw_plain(svc.get())
    batch = dict(good)
    batch[bad[0]] = bad[1]
    with pytest.raises(ValidationError) as info:
        svc.update_batch(batch)
    assert bad[0] in info.value.errors
    assert svc.version == before_version and thaw_plain(svc.get()) == before


class ConfigModel(RuleBasedStateMachine):
    """The service against a plain dict model: same content, one version per accepted batch."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.svc = ConfigService(SqliteConfigStore(Path(self.dir) / "c.sqlite"), settings=FAST, start=False)
        self.model: dict = {}
        self.versions: list[dict] = [{}]

    @rule(changes=st.dictionaries(paths, json_values | st.just(DELETE), min_size=1, max_size=3))
    def batch(self, changes):
        keys = list(changes)
        overlapping = any(
            a == b or a.startswith(b + ".") or b.startswith(a + ".") for i, a in enumerate(keys) for b in keys[i + 1 :]
        )
        try:
            self.svc.update_batch(changes)
        except ValidationError:
            assert overlapping
            return
        assert not overlapping
        for path, value in changes.items():
            set_path(self.model, parse_path(path), copy.deepcopy(value))
        self.versions.append(copy.deepcopy(self.model))

    @precondition(lambda self: len(self.versions) > 1)
    @rule(data=st.data())
    def rollback(self, data):
        target = data.draw(st.integers(0, len(self.versions) - 1))
        self.svc.rollback(target)
        self.model = copy.deepcopy(self.versions[target])
        self.versions.append(copy.deepcopy(self.model))

    @invariant()
    def same_content_and_version(self):
        assert thaw_plain(self.svc.get()) == self.model
        assert self.svc.version == len(self.versions) - 1

    def teardown(self) -> None:
        self.svc.close()
        shutil.rmtree(self.dir)


ConfigModel.TestCase.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTheServiceBehavesLikeAVersionedDict = ConfigModel.TestCase
