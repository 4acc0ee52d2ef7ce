#!/usr/bin/env bash
# mypy over the package as it is installed: esf/ plus tasks/, workers/, beat/
# and plugins/ mapped into the esf namespace (see pyproject's package-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.typecheck
rm -rf "$tree"
mkdir -p "$tree/esf"
for entry in esf/*; do
  ln -s "../../$entry" "$tree/esf/$(basename "$entry")"
done
for folder in tasks workers beat plugins; do
  ln -s "../../$folder" "$tree/esf/$folder"
done
MYPY="${MYPY:-.venv/bin/mypy}"
cd "$tree"
"../$MYPY" --config-file ../pyproject.toml --cache-dir ../.mypy_cache -p esf
