"""Print the figures table of docs/reliability.md from the JSON records of a run.

    python -m tests.faults.report /tmp/faults      # the directory given as ESF_FAULTS_REPORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("sent", "done", "duplicated", "dead_lettered", "lost", "recover_s")


def table(directory: Path) -> str:
    lines = ["| scenario | sent | done | duplicated | dead-lettered | lost | recover (s) | more |",
             "|---|---|---|---|---|---|---|---|"]
    for path in sorted(directory.glob("*.json")):
        r = json.loads(path.read_text())
        recover = "—" if r["recover_s"] is None else f"{r['recover_s']:.1f}"
        extra = ", ".join(f"{k} {v}" for k, v in r.get("extra", {}).items())
        dead = "—" if r.get("dead_lettered") is None else r["dead_lettered"]
        lines.append(f"| {r['scenario']} | {r['sent']} | {r['done']} | {r['duplicated']} | "
                     f"{dead} | {r['lost']} | {recover} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/esf-faults-report")))
