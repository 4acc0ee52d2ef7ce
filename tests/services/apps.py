"""The application the service-task tests run in `esf` subprocesses (settings from ESF_*)."""

from __future__ import annotations

import esf
from esf.foundation import Foundation


def make() -> Foundation:
    """A Foundation with one application job and one job declared the plain way on a service queue."""
    fnd = Foundation(esf.Settings.from_env())

    @fnd.job(name="app.hello", retries=0)
    def hello() -> str:
        return "hello"

    @fnd.job(name="esf.flags.report", queue=fnd.settings.jobs.service_queue("flags"), retries=1, timeout=30)
    def report(key: str = "") -> str:
        """Report which flags were evaluated."""
        return key

    return fnd
