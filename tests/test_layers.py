"""The core (esf/) reaches backends through their entry points and public names, never a plugin's private modules."""

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
