"""The application the secrets worker tests run (settings from ESF_* variables)."""

from __future__ import annotations

import logging

import esf
from esf.foundation import Foundation

log = logging.getLogger("tests.secrets.apps")


def make(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())

    @fnd.job(name="s.use_secret", retries=0)
    def use_secret(path: str, key: str) -> int:
        value = fnd.secrets.get(path, key)
        log.info("using secret %s of %s: %s (%r)", key, path, value, value)
        return len(value.reveal())

    @fnd.job(name="s.fail_with_secret", retries=1, backoff=0.1)
    def fail_with_secret(path: str, key: str) -> None:
        value = fnd.secrets.get(path, key)
        raise PermissionError(f"upstream refused the credential {value} ({value!r})")

    @fnd.job(name="s.config_secret", retries=0)
    def config_secret(config_path: str) -> str:
        value = fnd.config.get(config_path)
        log.info("configured value at %s is %s", config_path, value)
        return type(value).__name__

    return fnd
