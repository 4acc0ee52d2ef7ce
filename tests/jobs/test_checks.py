"""Start-up checks: a Redis broker that can lose jobs is reported loudly."""

from __future__ import annotations

import pytest

import esf
from esf.errors import SettingsError
from esf.foundation import Foundation
from esf.jobs._checks import RedisDurabilityWarning


def test_a_redis_broker_without_persistence_is_warned_about_or_refused(redis_url: str, data_dir) -> None:  # type: ignore[no-untyped-def]
    # Given the shared test Redis, which keeps nothing on disk
    fnd = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir)))
    # When a worker would start on it, a warning names the problem and the fix
    with pytest.warns(RedisDurabilityWarning, match="appendonly yes"):
        problems = fnd.check_broker()
    assert problems
    # And with the strict setting it refuses to start
    strict = Foundation(esf.Settings(broker_url=redis_url, data_dir=str(data_dir),
                                     jobs=esf.settings.JobSettings(redis_durability_check="error")))
    with pytest.raises(SettingsError, match="not durable"):
        strict.check_broker()
    fnd.close()
    strict.close()
