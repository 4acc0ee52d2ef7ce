"""Backends are found in one way: by their name in the ``esf.plugins`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import SettingsError

#: The entry-point group every backend (bundled or third-party) registers in.
ENTRY_POINT_GROUP = "esf.plugins"


def load_plugin(name: str, *, setting: str) -> Any:
    """The object registered as ``name`` (``"cache.redis"``) in the ``esf.plugins`` entry-point group.

    Parameters:
        name: the entry point's name, ``<service>.<backend>``.
        setting: the setting that chose it, named in the error.

    Raises:
        SettingsError: nothing is registered under ``name`` (an install without ESF's metadata:
            reinstall it, e.g. ``pip install -e .``).
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return ep.load()
    raise SettingsError(f"{setting}: no backend {name!r} in the {ENTRY_POINT_GROUP!r} entry-point group "
                        "(reinstall ESF, or install the package that provides it)", setting=setting)
