"""The wheel, installed into a fresh virtual environment, holds every module under the ``esf`` name.

tasks/, workers/, beat/ and plugins/ are mapped to ``esf.tasks``, ``esf.workers``,
``esf.beat`` and ``esf.plugins`` by setup.py; a sub-package the mapping misses
would only show up here, in an installed wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder of each top-level import name.
MAPPED = {"esf": "esf", "esf.tasks": "tasks", "esf.workers": "workers", "esf.beat": "beat", "esf.plugins": "plugins"}
SOURCES = ("pyproject.toml", "setup.py", "README.md", *sorted(set(MAPPED.values())))

pytestmark = pytest.mark.slow

# Runs inside the fresh venv: imports every module of the installed package and loads every plugin entry point.
PROBE = r"""
import importlib, importlib.metadata, json, pkgutil, sys
import esf
modules, failed = [], {}
def onerror(name):
    failed[name] = repr(sys.exc_info()[1])
for info in pkgutil.walk_packages(esf.__path__, "esf.", onerror=onerror):
    if info.name.endswith(".__main__"):  # importing it runs the program
        modules.append(info.name)
        continue
    try:
        importlib.import_module(info.name)
        modules.append(info.name)
    except Exception as exc:
        failed[info.name] = f"{type(exc).__name__}: {exc}"
plugins = {}
for ep in importlib.metadata.entry_points(group="esf.plugins"):
    try:
        ep.load()
        plugins[ep.name] = "ok"
    except Exception as exc:
        plugins[ep.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"file": esf.__file__, "modules": modules, "failed": failed, "plugins": plugins}))
"""


def source_modules() -> set[str]:
    """Every module of the source tree, under its installed name."""
    names: set[str] = set()
    for package, folder in MAPPED.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if "__pycache__" in rel.parts or (package == "esf" and rel.parts[0] in ("tasks", "workers", "beat")):
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            names.add(".".join((package, *parts)))
    return names


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH, no ESF_*: nothing of the source tree may leak into the fresh venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith("ESF_")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the package sources (no build/ or egg-info in the worktree)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], cwd=src)
    (found,) = dist.glob("esf-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel, its runtime dependencies and the extras its
    optional plugins need (``eventsourcing``: a persistence module subclasses that library's classes)."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", str(path)], cwd=path.parent)
    _run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[eventsourcing]"], cwd=path.parent)
    return path


@pytest.fixture(scope="module")
def probe(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = _run([str(venv / "bin" / "python"), "-c", PROBE], cwd=cwd)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_wheel_installs_only_the_esf_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        assert "esf/py.typed" in zf.namelist()
    assert top == {"esf", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}


def source_data_files() -> set[str]:
    """Every file of the package folders that is not Python source (py.typed, the migrations' template),
    as its path inside the wheel."""
    files: set[str] = set()
    for package, folder in MAPPED.items():
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT / folder)
            if (path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in rel.parts
                    or (package == "esf" and rel.parts[0] in ("tasks", "workers", "beat"))):
                continue
            files.add("/".join((*package.split("."), *rel.parts)))
    return files


def test_the_wheel_holds_every_data_file_and_every_migration(wheel: Path) -> None:
    # Given the package folders' data files (package_data in setup.py must name each of them)
    expected = source_data_files()
    assert "esf/plugins/sqlalchemy_events/migrations/script.py.mako" in expected
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # Then every one is in the wheel, as are the migration scripts alembic runs
    assert expected - names == set()
    versions = {p.name for p in (ROOT / "plugins/sqlalchemy_events/migrations/versions").glob("0*.py")}
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("esf/plugins/sqlalchemy_events/migrations/versions/")}
    assert versions and versions <= shipped


def test_the_installed_package_comes_from_the_venv_not_the_source_tree(probe: dict[str, Any], venv: Path) -> None:
    assert Path(probe["file"]).resolve().is_relative_to(venv.resolve())


def test_every_module_of_the_installed_package_imports(probe: dict[str, Any]) -> None:
    assert probe["failed"] == {}


def test_the_mapped_folders_are_installed_under_esf(probe: dict[str, Any]) -> None:
    modules = set(probe["modules"])
    for name in ("esf.tasks", "esf.workers", "esf.beat", "esf.plugins", "esf.workers.profiles"):
        assert name in modules


def test_every_source_module_is_in_the_wheel(probe: dict[str, Any]) -> None:
    # A folder the mapping misses (no __init__.py, or a new sub-package) would be dropped silently.
    missing = source_modules() - {"esf", *probe["modules"]}
    assert missing == set()


def test_every_plugin_entry_point_loads(probe: dict[str, Any]) -> None:
    assert {name: status for name, status in probe["plugins"].items() if status != "ok"} == {}


def test_the_esf_command_runs(venv: Path, tmp_path: Path) -> None:
    proc = _run([str(venv / "bin" / "esf"), "--help"], cwd=tmp_path)
    assert "usage: esf" in proc.stdout
    assert "worker" in proc.stdout and "flower" in proc.stdout
