"""The import rules of docs/architecture.md ("Layers"): the core reaches backends through their entry points and
public names, never a plugin's private modules; plugins, tasks, workers and beat keep to their own layer."""

from __future__ import annotations

import re
from pathlib import Path

ESF = Path(__file__).resolve().parents[1] / "esf"
PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+(esf\.plugins|\.+plugins)\.\w+\._\w+")
MODULE_PATH = re.compile(r"""["']esf\.plugins\.\w+""")


def offending_lines() -> list[str]:
    found = []
    for path in sorted(ESF.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_IMPORT.match(line) or MODULE_PATH.search(line):
                found.append(f"{path.relative_to(ESF.parent)}:{n}: {line.strip()}")
    return found


def test_no_core_module_imports_a_plugins_private_module_or_names_one_as_a_string() -> None:
    # Given every module of esf/; Then none imports esf.plugins.<pkg>._<private> or names a plugin module by path
    assert offending_lines() == []


# -- the other rules of docs/architecture.md ("Layers"), on every import statement ---------------------------------

ROOT = ESF.parent
#: Source folder of each installed package name.
INSTALLED = {"esf": "esf", "esf.tasks": "tasks", "esf.workers": "workers", "esf.beat": "beat", "esf.plugins": "plugins"}


def installed_name(path: Path) -> str:
    """The module name of a source file once installed (``plugins/x/_a.py`` → ``esf.plugins.x._a``)."""
    for package, folder in INSTALLED.items():
        base = ROOT / folder
        if path.is_relative_to(base):
            rel = path.relative_to(base).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            return ".".join((package, *parts))
    raise ValueError(path)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(absolute module name, at module level, line)`` of every import in ``path`` (relative ones resolved)."""
    import ast

    name = installed_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from pkg import name`` may import the module ``pkg.name``: count both.
            found += [(f"{module}.{alias.name}", id(node) in top, node.lineno) for alias in node.names]
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def is_private_plugin_module(module: str) -> bool:
    parts = module.split(".")
    return parts[:2] == ["esf", "plugins"] and any(part.startswith("_") and not part.startswith("__")
                                                   for part in parts[3:])


def plugin_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["esf", "plugins"] and len(parts) > 2 else None


def test_the_core_imports_tasks_workers_beat_and_plugins_only_inside_functions() -> None:
    # Given the core's module-level imports; Then none reaches esf.tasks, esf.workers, esf.beat or esf.plugins
    late = ("esf.tasks", "esf.workers", "esf.beat", "esf.plugins")
    found = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in sources("esf") for module, top, line in imports(p)
             if top and module.startswith(late)]
    assert found == []


def test_no_plugin_imports_tasks_workers_or_beat() -> None:
    found = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in sources("plugins") for module, _, line in imports(p)
             if module.startswith(("esf.tasks", "esf.workers", "esf.beat"))]
    assert found == []


def test_no_module_imports_another_plugins_private_module() -> None:
    # Given plugins/, tasks/, workers/ and beat/; Then a plugin's private modules are imported by that plugin only
    found = []
    for p in sources("plugins", "tasks", "workers", "beat"):
        own = plugin_of(installed_name(p))
        found += [f"{p.relative_to(ROOT)}:{line}: {module}" for module, _, line in imports(p)
                  if is_private_plugin_module(module) and plugin_of(module) != own]
    assert found == []


def test_no_installed_module_imports_the_tests_or_the_benchmarks() -> None:
    found = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in sources("esf", "plugins", "tasks", "workers", "beat")
             for module, _, line in imports(p) if module.split(".")[0] in ("tests", "bench")]
    assert found == []


def test_the_import_reader_resolves_relative_imports_and_sees_where_they_are() -> None:
    # Given the real modules: a relative import of a plugin's private module, and a late import in the core
    assert any(module == "esf.plugins.sqlalchemy_events._schema.events" and top
               for module, top, _ in imports(ROOT / "plugins/sqlalchemy_events/_append_postgres.py"))
    late = [(m, top) for m, top, _ in imports(ESF / "foundation.py") if m.startswith("esf.workers")]
    assert late and not any(top for _, top in late)
    assert is_private_plugin_module("esf.plugins.redis_cache._tier.RedisCacheTier")
    assert not is_private_plugin_module("esf.plugins.redis_cache.RedisCacheTier")


# -- services get what they use (esf.lifecycle.ServiceContext), never the Foundation --------------------------------

#: Packages of esf/ that are front ends of a Foundation, not services: the CLI loads one, esf.testing builds one.
FRONT_ENDS = ("cli", "testing")
#: Service modules that may name the Foundation, and why: the public attributes through which Celery reaches it.
FOUNDATION_ALLOWED = {
    # EsfCelery.foundation: the worker's signal handlers (workers/signals.py) find the Foundation of the app they run.
    "esf/jobs/_celery.py",
    # EsfTask.foundation: a task body's ``self.foundation``, and the job runner's way back to the hooks and services.
    "esf/jobs/_task.py",
}


def foundation_imports() -> list[str]:
    found = []
    for package in sorted(p for p in ESF.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if package.name in FRONT_ENDS:
            continue
        for path in sources(str(package.relative_to(ROOT))):
            if str(path.relative_to(ROOT)) in FOUNDATION_ALLOWED:
                continue
            found += [f"{path.relative_to(ROOT)}:{line}: {module}" for module, _, line in imports(path)
                      if module == "esf.foundation" or module.startswith("esf.foundation.")]
    return found


def test_no_service_module_imports_the_foundation() -> None:
    # Given every module of a service package (esf/<service>/), type-only imports included
    # Then none imports esf.foundation: a service gets a ServiceContext and providers of its siblings,
    # except the two Celery attributes of FOUNDATION_ALLOWED
    assert foundation_imports() == []
    assert all((ROOT / path).exists() for path in FOUNDATION_ALLOWED)
