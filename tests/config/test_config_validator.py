"""``ConfigService.register_validator``: checks in code, on the document a batch would produce."""

from __future__ import annotations

import pytest

from esf.errors import ValidationError


@pytest.mark.parametrize("spec", ["sqlite", "redis"], indirect=True)
def test_a_validator_sees_the_resulting_document_and_its_problems_reject_the_whole_batch(make_service):
    # Given a validator of "limits" requiring soft <= hard, which records what it was shown
    svc = make_service()
    seen = []

    def check(document, changed):
        seen.append((dict(document.get("limits", {})), sorted(changed)))
        limits = document.get("limits", {})
        if limits.get("soft", 0) > limits.get("hard", 10):
            return {"limits.soft": "must not exceed limits.hard"}
        return {}

    svc.register_validator(check, prefixes=["limits"])
    svc.update_batch({"limits.soft": 3, "limits.hard": 5})
    version = svc.version
    # When a batch would make soft exceed hard, together with an unrelated path
    with pytest.raises(ValidationError) as info:
        svc.update_batch({"limits.hard": 2, "other.x": 1})
    # Then it is refused with the validator's problem, and nothing of it was written
    assert info.value.errors == {"limits.soft": "must not exceed limits.hard"}
    assert svc.version == version and svc.get("other.x", default=None) is None
    # And the validator saw the document the batch would produce, and the changed paths
    assert seen[-1] == ({"soft": 3, "hard": 2}, ["limits.hard", "other.x"])
    # And a batch that does not touch its prefixes does not call it
    calls = len(seen)
    svc.update("other.y", 1)
    assert len(seen) == calls


@pytest.mark.parametrize("spec", ["sqlite"], indirect=True)
def test_a_validator_registration_with_a_bad_prefix_is_refused(make_service):
    svc = make_service()
    with pytest.raises(ValidationError):
        svc.register_validator(lambda d, c: {}, prefixes=["bad path!"])
    with pytest.raises(ValidationError):
        svc.register_validator(lambda d, c: {}, prefixes=[])
