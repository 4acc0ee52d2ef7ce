"""Backends are found in one way: by their name in the ``esf.plugins`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import SettingsError

#: The entry-point group every backend (bundled or third-party) registers in.
ENTRY_POINT_GROUP = "esf.plugins"


def load_plugin(name: str, *, setting: str) -> Any:
    """The object registered as ``name`` (``"cache.redis"``) in the ``esf.plugins`` entry-point group.

    Parameters:
        name: the entry point's name, ``<service>.<backend>``.
        setting: the setting that chose it, named in the error.

    A name is owned by one package: when two installed distributions register
    ``name`` with different objects (a third-party package reusing a bundled name
    such as ``events.sqlalchemy``), neither is loaded. A third-party backend takes
    a name of its own (``events.mystore``) and is chosen by it in the settings.

    Raises:
        SettingsError: nothing is registered under ``name`` (an install without ESF's metadata:
            reinstall it, e.g. ``pip install -e .``), or two distributions register it.
    """
    found = {ep.value: ep for ep in entry_points(group=ENTRY_POINT_GROUP, name=name)}
    if len(found) > 1:
        owners = sorted(f"{ep.value} ({_distribution(ep)})" for ep in found.values())
        raise SettingsError(f"{setting}: the backend name {name!r} is registered twice in the "
                            f"{ENTRY_POINT_GROUP!r} entry-point group, by {' and by '.join(owners)}; a name "
                            "belongs to one package: uninstall one, or register the other under a name of its own",
                            setting=setting)
    for ep in found.values():
        return ep.load()
    raise SettingsError(f"{setting}: no backend {name!r} in the {ENTRY_POINT_GROUP!r} entry-point group "
                        "(reinstall ESF, or install the package that provides it)", setting=setting)


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
