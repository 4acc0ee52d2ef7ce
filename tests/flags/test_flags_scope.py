"""``fnd.flags.scope``: a request's context and answers, checked at the call site."""

from __future__ import annotations

import pytest

from esf.errors import ValidationError
from esf.jobs._meta import current_flags


def test_a_scope_gives_its_context_to_evaluations_and_remembers_their_answers(sqlite_config, make_flags):
    # Given a flag on for French users
    flags = make_flags(sqlite_config)
    flags.set("fr", {"rules": [{"if": {"attr": "country", "op": "eq", "value": "FR"}, "serve": {"variant": "on"}}],
                     "serve": {"variant": "off"}})
    # When a request scope evaluates it without a context, then with the same key, then with another key
    with flags.scope({"key": "u1", "country": "FR"}) as scope:
        assert flags.enabled("fr")
        assert flags.enabled("fr", {"key": "u1", "country": "FR"})
        assert not flags.enabled("fr", {"key": "u2", "country": "DE"})
        # And a context that is not a mapping is an error answer, not an exception
        assert flags.evaluate("fr", ["u1"], default="D").reason == "error"  # type: ignore[arg-type]
        wire = scope.to_wire()
    # Then the scope's answers (what a job enqueued here carries) are those for its own key
    assert wire == {"context": {"key": "u1", "country": "FR"}, "answers": {"fr": [True, "on", "rule_match", 0]}}
    # And outside the scope nothing is carried
    assert current_flags.get() is None


@pytest.mark.parametrize(("context", "problem"), [
    (["not", "a", "mapping"], "not a mapping"),
    ({"key": object()}, "not JSON"),
    ({"key": "u", "blob": "x" * 5000}, "too large"),
])
def test_a_scope_refuses_a_context_that_cannot_travel_in_job_headers(sqlite_config, make_flags, context, problem):
    flags = make_flags(sqlite_config)
    with pytest.raises(ValidationError) as info:
        with flags.scope(context):
            pass
    assert info.value.errors == {"context": problem}
    assert current_flags.get() is None


@pytest.mark.parametrize(("consistency", "want"), [("consistent", "grid"), ("latest", "list")])
def test_in_a_job_a_carried_answer_is_used_only_when_consistent_and_well_formed(sqlite_config, make_flags,
                                                                                   consistency, want):
    # Given a flag now serving "list", and a job whose headers carried "grid" for it and garbage for another
    from esf.jobs._meta import FlagCarry

    flags = make_flags(sqlite_config, job_consistency=consistency)
    definition = {"variants": {"list": 1, "grid": 2}, "off_variant": "list", "serve": {"variant": "list"}}
    flags.set("layout", definition)
    flags.set("other", definition)
    carry = FlagCarry({"key": "u1"}, {"layout": [2, "grid", "rollout", None], "other": "garbage"}, received=True)
    token = current_flags.set(carry)
    try:
        # When the job evaluates both (no context: the carried one)
        layout, other = flags.evaluate("layout"), flags.evaluate("other")
        # And for another key
        stranger = flags.evaluate("layout", {"key": "u2"})
    finally:
        current_flags.reset(token)
    # Then the carried answer is used only in consistent mode, the malformed one never
    assert layout.variant == want and (layout.reason == "rollout") == (consistency == "consistent")
    assert (other.variant, other.reason) == ("list", "default")
    assert stranger.variant == "list"


def test_concurrent_requests_in_threads_and_tasks_keep_their_own_scopes(sqlite_config, make_flags):
    # Given a flag on for even user numbers
    import asyncio
    import threading

    flags = make_flags(sqlite_config)
    flags.set("even", {"rules": [{"if": {"attr": "n", "op": "in", "value": [0, 2, 4, 6, 8]},
                                  "serve": {"variant": "on"}}], "serve": {"variant": "off"}})
    seen = {}

    def request(n):
        with flags.scope({"key": f"u{n}", "n": n}) as scope:
            for _ in range(200):
                flags.evaluate("even")
            seen[f"thread-{n}"] = scope.to_wire()

    async def task(n):
        with flags.scope({"key": f"u{n}", "n": n}) as scope:
            for _ in range(50):
                flags.evaluate("even")
                await asyncio.sleep(0)
            seen[f"task-{n}"] = scope.to_wire()

    async def tasks():
        await asyncio.gather(*(task(n) for n in range(10)))

    # When ten threads and ten asyncio tasks each evaluate in their own scope at the same time
    threads = [threading.Thread(target=request, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    # Then each scope holds only its own context and answer
    for n in range(10):
        want = "on" if n % 2 == 0 else "off"
        for kind in ("thread", "task"):
            wire = seen[f"{kind}-{n}"]
            assert wire["context"] == {"key": f"u{n}", "n": n}
            assert wire["answers"]["even"][1] == want
