"""The application of the cache worker tests (settings from ESF_* variables): loaders that read their value
from Redis (``source:<key>``; ``"fail"`` makes them raise) and record which process ran them."""

from __future__ import annotations

import json
import os

import esf
from esf.foundation import Foundation


def make() -> Foundation:
    fnd = Foundation(esf.Settings.from_env())

    @fnd.cache.loader("t.price")
    def price(key: str) -> object:
        client = fnd.redis
        client.rpush(f"calls:{key}", os.getpid())
        raw = client.get(f"source:{key}")
        if raw is None or raw == b"fail":
            raise ConnectionError(f"the price source has no value for {key}")
        return json.loads(raw)

    return fnd
