"""esf.testing is importable without pytest, and its abstract suites skip themselves where they are collected."""

from __future__ import annotations

import subprocess
import sys
import unittest

from esf.testing import config, events, jobs, telemetry


def test_the_suites_import_without_pytest() -> None:
    # Given an interpreter where importing pytest fails
    code = ("import sys; sys.modules['pytest'] = None; import esf, esf.testing, esf.testing.events, "
            "esf.testing.config, esf.testing.jobs, esf.testing.telemetry; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # Then ESF and every suite import
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_suite_run_as_is_skips_and_its_subclass_runs() -> None:
    # Given the abstract recorder suite and a subclass of it defined outside esf.testing
    class Mine(events.EventRecorderContract):
        def create_store(self) -> object:
            from esf.events import InMemoryEventRecorder

            return InMemoryEventRecorder()

    loader = unittest.TestLoader()
    for base in (events.EventRecorderContract, config.ConfigStoreContract, jobs.CoordinatorContract,
                 jobs.ScheduleStoreContract, telemetry.SnapshotStoreContract):
        result = unittest.TestResult()
        loader.loadTestsFromTestCase(base).run(result)
        # Then the base skips every test and fails none
        assert result.testsRun > 0 and len(result.skipped) == result.testsRun and result.wasSuccessful()
    result = unittest.TestResult()
    loader.loadTestsFromTestCase(Mine).run(result)
    assert result.testsRun > 0 and not result.skipped and result.wasSuccessful(), result.failures + result.errors
