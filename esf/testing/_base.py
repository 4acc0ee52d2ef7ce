"""What every contract suite shares: the abstract base, and a bounded wait for conditions."""

from __future__ import annotations

import time
import unittest
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Longest wait, in seconds, for a condition another thread or process makes true (generous: CI is loaded).
EVENTUALLY_TIMEOUT_S = 30.0


class ContractTestCase(unittest.TestCase):
    """A contract suite: abstract here, run by the subclasses a backend's author writes.

    A suite class defined in ``esf.testing`` skips itself, so importing it into a
    test module (where pytest and unittest collect it) runs nothing twice; its
    subclasses elsewhere run every test. Prefer importing the module
    (``from esf.testing import events``) to keep the base out of the listing.
    """

    #: True on the suites ``esf.testing`` defines; False on every subclass defined elsewhere.
    contract_base = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.contract_base = cls.__module__.startswith("esf.testing")

    def setUp(self) -> None:
        super().setUp()
        if self.contract_base:
            self.skipTest(f"{type(self).__name__} is a contract suite: subclass it for a backend")

    def eventually(self, condition: Callable[[], T], *, what: str, timeout_s: float = EVENTUALLY_TIMEOUT_S) -> T:
        """Poll ``condition`` until it returns a truthy value, and return it; fail after ``timeout_s``.

        A bound on waiting, not a speed requirement: the condition is what is asserted.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"{what}: not reached within {timeout_s} s")
            time.sleep(0.02)
