"""The facade exports exactly its public names."""

from __future__ import annotations

import types

import esf


def test_all_lists_every_public_name_of_the_facade() -> None:
    public = {n for n, v in vars(esf).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(esf.__all__) == (public - {"annotations"}) | {"errors"}


def test_every_error_has_a_stable_unique_code() -> None:
    from esf import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EsfError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    assert all(isinstance(c, str) and c for c in codes)
    err = errors.error_from_code("duplicate_event_id", "x")
    assert isinstance(err, errors.DuplicateEventId)


def test_worker_plumbing_is_not_part_of_the_foundation_public_surface() -> None:
    from esf.foundation import Foundation
    from esf.testing import TestFoundation

    worker_only = {"preload", "worker_started", "worker_stopped", "after_fork", "pool_process_started",
                   "check_broker", "boot", "started", "stopped"}
    for cls in (Foundation, TestFoundation):
        public = {name for name in dir(cls) if not name.startswith("_")}
        assert not public & worker_only, cls.__name__
    # What an application uses stays public
    assert {"job", "schedule", "chain", "gather", "events", "config", "health", "close"} <= set(dir(Foundation))
