"""Maps tasks/, workers/, beat/ and plugins/ into the ``esf`` namespace.

Every sub-package of a mapped folder must be listed for setuptools; this
walks the tree so that a new plugin package needs no edit here.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
MAPPED = {"esf": "esf", "esf.tasks": "tasks", "esf.workers": "workers", "esf.beat": "beat", "esf.plugins": "plugins"}


def _walk() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in MAPPED.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            pkg = ".".join((name, *rel.parts)) if rel.parts else name
            packages.append(pkg)
            package_dir[pkg] = str(Path(folder, *rel.parts).as_posix())
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _walk()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"esf": ["py.typed"], "esf.plugins.sqlalchemy_events.migrations": ["script.py.mako"]},
    include_package_data=True,
)
