"""Print the requirements of splitedge's base and the given extras, one a line, from pyproject.toml.

The Dockerfile installs these in a layer of their own before it copies the code, so a change to the
code does not reinstall torch; scripts/container/fetch_wheels.sh hands the same list to `pip download`.
Extras that name splitedge itself (`train = ["splitedge[edge]", ...]`) are followed. Standard library
only (tomllib: Python 3.11), so it runs before anything is installed.

Usage: python3 scripts/container/requirements.py [PYPROJECT] EXTRA[,EXTRA...]
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_SELF = re.compile(r"^\s*splitedge\s*\[([^\]]*)\]\s*$")


def requirements(project: dict, extras: list[str]) -> list[str]:
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            known = ", ".join(sorted(optional)) or "none"
            raise SystemExit(f"requirements.py: error: pyproject.toml has no extra {extra!r} (known: {known})")
        for req in optional[extra]:
            self_ref = _SELF.match(req)
            if self_ref:
                todo.extend(e.strip() for e in self_ref.group(1).split(",") if e.strip())
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if len(argv) == 2 else Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = [e.strip() for e in (argv[-1] if argv else "").split(",") if e.strip()]
    try:
        project = tomllib.loads(path.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise SystemExit(f"requirements.py: error: cannot read [project] of {path}: {exc}") from None
    print("\n".join(requirements(project, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
