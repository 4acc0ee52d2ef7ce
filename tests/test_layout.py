"""The docs stay true to the tree: docs/architecture.md's map lists every module, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folders the map lists module by module (the installed package, and the benchmarks).
MAPPED = ("esf", "plugins", "tasks", "workers", "beat", "bench")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def tree_modules() -> set[str]:
    """Every package (``dir/``) and module (``dir/x.py``, ``__init__.py`` left out) of the mapped folders."""
    found = {f"{folder}/" for folder in MAPPED}
    for folder in MAPPED:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            if path.name == "__init__.py":
                found.add(f"{rel.parent.as_posix()}/")
            else:
                found.add(rel.as_posix())
    return found


def map_entries(markdown: str) -> set[str]:
    """The paths of the first code block under "## Map of the tree": a tree, two spaces per level."""
    section = markdown.split("\n## Map of the tree\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    entries: set[str] = set()
    stack: list[str] = []
    for line in block.splitlines():
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del stack[depth:]
        path = "/".join([*stack, name.rstrip("/")])
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            entries.add(f"{path}/")
        else:
            entries.add(path)
    return entries


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", without_fences(markdown), flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def without_fences(markdown: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)


def without_code(markdown: str) -> str:
    """The text outside fenced blocks and inline code (where brackets are not links)."""
    return re.sub(r"`[^`\n]*`", "", without_fences(markdown))


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(without_code(path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{path.name}: {target} (no file {file_part})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{path.name}: {target} (no heading #{anchor} in {dest.name})")
    return broken


def test_the_architecture_map_lists_every_module_and_nothing_else() -> None:
    # Given the map at the top of docs/architecture.md and the modules of the tree
    listed = map_entries((ROOT / "docs" / "architecture.md").read_text())
    modules = tree_modules()
    # Then each module has its line, and each line names a module that exists
    assert sorted(modules - listed) == [], "modules missing from the map"
    assert sorted(listed - modules) == [], "map lines naming no module"


def test_every_relative_link_of_the_readme_and_the_docs_resolves_to_a_file_and_heading() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    assert [b for page in pages for b in broken_links(page)] == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    # Given a page with a good link, a link to a missing file and one to a missing heading
    (tmp_path / "other.md").write_text("# Other\n\n## The `x` part: y\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#the-x-part-y) [gone](missing.md) [no anchor](other.md#nowhere) "
                    "`[code](ignored.md)` [web](https://example.org)\n")
    # Then exactly the two broken ones are reported
    assert broken_links(page) == ["page.md: missing.md (no file missing.md)",
                                  "page.md: other.md#nowhere (no heading #nowhere in other.md)"]
