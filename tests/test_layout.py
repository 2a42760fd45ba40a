"""DESIGN.md §2's import rules, checked on the source: who may import whom."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"split", "bottlenecks", "protos", "edge_server", "mobile_client", "simulators"}
# split -> protos: the payload is the protocol's Payload message (see split/api.py's docstring).
ALLOWED = {
    "bottlenecks": set(),
    "protos": set(),
    "split": {"bottlenecks", "protos"},
    "edge_server": {"split", "bottlenecks", "protos"},
    "mobile_client": {"split", "bottlenecks", "protos"},
    "simulators": {"split", "bottlenecks", "mobile_client"},
}


def _modules(path: Path) -> set[str]:
    """The dotted names of the modules `path` imports (relative imports aside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _imports(path: Path) -> set[str]:
    return {m.split(".")[0] for m in _modules(path)} & PACKAGES


def test_import_rules():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for imported in _imports(path) - allowed - {pkg}:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "\n".join(bad)


SIMULATOR_MAY_IMPORT = ("mobile_client.session", "mobile_client.controller", "mobile_client.costs",
                        "mobile_client.decision", "mobile_client.estimators", "mobile_client.errors")


def test_simulators_use_only_the_session_driver_and_controller_of_mobile_client():
    for path in (ROOT / "simulators").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mobile_client"):
                assert node.module in SIMULATOR_MAY_IMPORT, path


def test_offline_work_is_reached_only_through_its_commands():
    """Nothing outside `split/train/` imports it: the device and the edge never load training
    code, and `splitedge train|eval|prefilter|finetune` reach `split.train.cli` by name."""
    bad = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if (ROOT / "split" / "train") in path.parents:
                continue
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _modules(path) if m.startswith("split.train")]
    assert not bad, "\n".join(bad)
